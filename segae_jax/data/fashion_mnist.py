"""Fashion-MNIST (Xiao et al., 2017) from its IDX files, as a tensorflow-datasets builder.

The IDX files come from Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist)
or from the upstream download (`python -m segae_jax.data.fetch` gets them either way). The builder
takes them through tfds's manual_dir, prepares the real train (60,000) and test (10,000) splits once
into array_record files, and the pipeline reads them with `as_data_source()`, without TensorFlow.
"""
import gzip
import hashlib
import os
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from segae_jax.data.sources import ArraySource
from segae_jax.data.info import LocalDatasetInfo
from segae_jax.errors import UserInputError

# SHA-256 of the *decompressed* IDX bytes. Debian's gzip headers differ from upstream's (name and
# timestamp stripped), so only the decompressed contents identify the real files.
IDX_FILES: Dict[str, str] = {
    'train-images-idx3-ubyte.gz': 'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
    'train-labels-idx1-ubyte.gz': 'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
    't10k-images-idx3-ubyte.gz': '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
    't10k-labels-idx1-ubyte.gz': '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
}
SPLIT_FILES = {'train': 'train', 'test': 't10k'}
SPLIT_SIZES = {'train': 60_000, 'test': 10_000}
CLASS_NAMES = ('t-shirt/top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt',
               'sneaker', 'bag', 'ankle boot')
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'segae_jax', 'fashion-mnist')
DEFAULT_IDX_DIRS = (DEBIAN_DIR, CACHE_DIR)
HOW_TO_GET = ('run `make data` (installs Debian\'s dataset-fashion-mnist or downloads the upstream '
              'files to ' + CACHE_DIR + '), or set --config.data.idx_dir to a folder holding '
              + ', '.join(IDX_FILES))


def missing_files(directory: str) -> Sequence[str]:
  return [f for f in IDX_FILES if not os.path.isfile(os.path.join(directory, f))]


def find_idx_dir(idx_dir: str = '') -> str:
  """Returns the folder with the four IDX files: `idx_dir` if given, else the first default that has them.

  Raises:
    UserInputError: one line naming what is missing and how to get the files.
  """
  if idx_dir:
    idx_dir = os.path.expanduser(idx_dir)
    if not os.path.isdir(idx_dir):
      raise UserInputError(f'Fashion-MNIST data directory {idx_dir} does not exist; {HOW_TO_GET}')
    missing = missing_files(idx_dir)
    if missing:
      raise UserInputError(f'Fashion-MNIST files missing in {idx_dir}: {", ".join(missing)}; '
                           f'{HOW_TO_GET}')
    return idx_dir
  for candidate in DEFAULT_IDX_DIRS:
    if os.path.isdir(candidate) and not missing_files(candidate):
      return candidate
  raise UserInputError(f'Fashion-MNIST files not found in {" or ".join(DEFAULT_IDX_DIRS)}; '
                       f'{HOW_TO_GET}')


def read_idx(path: str) -> np.ndarray:
  """Reads a gzipped IDX file into a uint8 array, checking its magic number, size and checksum.

  Returns [N, 28, 28] for image files and [N] for label files.

  Raises:
    UserInputError: the file is not a valid Fashion-MNIST IDX file.
  """
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise UserInputError(f'{path}: cannot read gzip IDX file ({e}); {HOW_TO_GET}') from None
  expected = IDX_FILES.get(os.path.basename(path))
  if expected is not None and hashlib.sha256(data).hexdigest() != expected:
    raise UserInputError(f'{path}: contents differ from the real Fashion-MNIST file (SHA-256 '
                         f'mismatch); {HOW_TO_GET}')
  if len(data) < 8 or data[:2] != b'\x00\x00' or data[2] != 0x08:
    raise UserInputError(f'{path}: not a uint8 IDX file (bad magic number)')
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=header)
  if array.size != int(np.prod(shape)):
    raise UserInputError(f'{path}: header says shape {shape} but holds {array.size} values')
  return array.reshape(shape)


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST built from local IDX files: 'image' uint8 [28, 28, 1], 'label' int64 in [0, 10)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Real train/test splits read from the IDX files.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = HOW_TO_GET

  def _info(self) -> tfds.core.DatasetInfo:
    # Built outside tfds's catalog: DatasetInfo is returned directly (no metadata folder).
    return LocalDatasetInfo(
        builder=self,
        description='Fashion-MNIST: 70,000 28x28 grayscale images of 10 garment classes.',
        features=tfds.features.FeaturesDict({
            # Raw uint8 tensors, not PNG: no decode on read, and no TensorFlow to encode.
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=('image', 'label'),
        # Keep the files' order: index i is the i-th image of the IDX file (the pipeline shuffles).
        disable_shuffling=True,
        homepage='https://github.com/zalandoresearch/fashion-mnist',
        citation='Xiao, Rasul, Vollgraf. Fashion-MNIST. arXiv:1708.07747, 2017.',
    )

  def _split_generators(self, dl_manager):
    idx_dir = find_idx_dir(str(dl_manager.manual_dir))
    return {split: self._generate_examples(idx_dir, prefix)
            for split, prefix in SPLIT_FILES.items()}

  def _generate_examples(self, idx_dir, prefix):
    images = read_idx(os.path.join(idx_dir, f'{prefix}-images-idx3-ubyte.gz'))
    labels = read_idx(os.path.join(idx_dir, f'{prefix}-labels-idx1-ubyte.gz'))
    if len(images) != len(labels):
      raise UserInputError(f'{idx_dir}: {len(images)} {prefix} images but {len(labels)} labels')
    for i in range(len(labels)):
      yield i, {'image': images[i][..., None], 'label': int(labels[i])}


def prepare(idx_dir: str = '', tfds_dir: Optional[str] = None) -> FashionMnistIdx:
  """Builds the array_record dataset once (about 5 s) and returns the builder.

  tfds writes into a temporary folder and renames it when complete, so an interrupted build leaves
  no half-built dataset behind.
  """
  idx_dir = find_idx_dir(idx_dir)
  builder = FashionMnistIdx(data_dir=tfds_dir or None, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=idx_dir))
  return builder


DECODED_FILE = 'decoded_splits.npz'


def decoded_splits(builder: FashionMnistIdx) -> Dict[str, ArraySource]:
  """Both splits decoded into memory: {'train': 60,000, 'test': 10,000 examples of 'image' uint8
  [28, 28, 1] and 'label' int64}.

  The first call reads them from the prepared dataset (tfds deserialises every example, a few
  seconds) and keeps the arrays beside it in `decoded_splits.npz` (55 MB), written to a temporary
  file and renamed, so a reader never sees half of it; later calls, in any process, load that file.
  Where the dataset directory is not writable the arrays are simply not kept.
  """
  path = os.path.join(builder.data_dir, DECODED_FILE)
  if os.path.exists(path):
    with np.load(path) as saved:
      return {split: ArraySource({key: saved[f'{split}/{key}'] for key in ('image', 'label')})
              for split in SPLIT_FILES}
  sources = builder.as_data_source()
  splits = {split: ArraySource.from_data_source(sources[split]) for split in SPLIT_FILES}
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, 'wb') as f:
      np.savez(f, **{f'{split}/{key}': array for split, source in splits.items()
                     for key, array in source.arrays.items()})
    os.replace(tmp, path)
  except OSError:
    if os.path.exists(tmp):
      os.remove(tmp)
  return splits
