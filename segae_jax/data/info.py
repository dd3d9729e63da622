"""The tfds DatasetInfo of the datasets this package builds itself (Fashion-MNIST from its IDX
files, the scenes, the user's folders)."""
import tensorflow_datasets as tfds


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """tfds.core.DatasetInfo without the look-up of precomputed metadata in tfds's public bucket.

  tfds runs that look-up whenever a builder is made for a dataset not yet prepared, and it first
  makes a temporary folder (tempfile.mkdtemp('tfds')) that it never removes, with or without a
  bucket to read: one empty /tmp/tmp*tfds folder per command on a new folder of images. These
  datasets are built from local files, so there is nothing to look up.
  """

  def initialize_from_bucket(self) -> None:
    """Nothing to read: the dataset is built here, its metadata written when it is prepared."""
