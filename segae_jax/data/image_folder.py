"""A folder of the user's images without masks, as a tensorflow-datasets builder (`image_folder`):
what the autoencoders (ae, sparse_ae, vae, unet_ae) and every reconstruction/KL term train on.

Layout: `images_dir` and every folder below it (hidden ones skipped) hold images (.png .jpg .jpeg
.tif .tiff .bmp, any case); the key of an image is its path below images_dir without the extension
('cats/cat_01'). split='fraction' splits them at random (seeded); split='folders' takes
`images_dir/train` and `images_dir/test`. Grayscale or RGB (`channels`), converted and checked as
in segmentation_folder (data.images.image_array), every file before anything is written; stored
at its own size (the long side capped at `max_size` if set) and brought to `image_size` by the
input pipeline (data.sizing), so one prepared dataset serves every training size.
"""
import dataclasses
import json
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from segae_jax.batch import spatial_shape
from segae_jax.data import local, normalize, sizing
from segae_jax.data.images import list_image_files, read_pixels
from segae_jax.data.dataset import Dataset, scale_images
from segae_jax.data.sources import hold
from segae_jax.data.info import LocalDatasetInfo
from segae_jax.errors import UserInputError


@dataclasses.dataclass(eq=False, kw_only=True)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """Where the images are, and what the input pipeline makes of them.

  Attributes:
    images_dir: folder of images, searched recursively (with split='folders': holding train/ and
      test/).
    image_size, channels, resize, split, test_fraction, split_seed, max_size, normalize: as in
      segae_jax.data.folder.FolderConfig (checked by data.local.check_common).

  `name` is set from a hash of the stored settings (paths made absolute first).

  Raises:
    UserInputError: a field has the wrong type or value (naming config.data.<field>).
  """
  name: str = ''
  images_dir: str
  image_size: Tuple[int, int] = (64, 64)
  channels: int = 3
  resize: str = 'resize'
  split: str = 'fraction'
  test_fraction: float = 0.2
  split_seed: int = 0
  max_size: int = 0
  normalize: str = 'unit'

  def __post_init__(self):
    local.check_paths(self, ('images_dir',))
    local.check_common(self)
    self.name = local.config_name('images', self.settings())
    if self.description is None:
      self.description = 'Images from ' + json.dumps(self.settings(), sort_keys=True)

  def settings(self) -> Dict[str, object]:
    """The fields that define what is stored (what the config name hashes)."""
    return {'images_dir': self.images_dir, 'channels': self.channels, 'split': self.split,
            'test_fraction': self.test_fraction, 'split_seed': self.split_seed,
            'max_size': self.max_size}


def split_files(config: ImageFolderConfig) -> Dict[str, List[Tuple[str, str]]]:
  """{'train': [(key, path)], 'test': [...]}, each sorted by key.

  Raises:
    UserInputError: a missing folder, no image in it, or an empty split.
  """
  if config.split == 'folders':
    return {s: list(list_image_files(f'{config.images_dir}/{s}', 'image', True).items())
            for s in local.SPLITS}
  files = list(list_image_files(config.images_dir, 'image', recursive=True).items())
  return local.split_by_fraction(files, config.test_fraction, config.split_seed,
                                 config.images_dir)


def read_image(path: str, config: ImageFolderConfig, transform: bool = True) -> np.ndarray:
  """One image, checked: [height, width, channels] uint8, uint16 or float32
  (data.images.read_pixels), capped at config.max_size with `transform`, else at the file's own
  size.

  Raises:
    UserInputError: naming the file and the problem.
  """
  image = read_pixels(path, config.channels)
  local.check_stored_fits(config, *spatial_shape(image, leading=0), path)
  return local.capped(image, None, config.max_size)[0] if transform else image


@dataclasses.dataclass(frozen=True)
class _ReadImage:
  config: ImageFolderConfig

  def __call__(self, item) -> Dict[str, object]:
    key, path = item
    return {'image': local.encode_image(read_image(path, self.config)), 'file_name': key}


class ImageFolder(tfds.core.ShardBasedBuilder, local.StoredDtype):
  """Images without masks from the user's folder (see ImageFolderConfig).

  Features: 'image' [height, width, channels] (at the image's own size, capped at max_size; PNG or
  a zlib array of its dtype: data.local.image_feature) and 'file_name' (the key). Splits 'train'
  and 'test' in key order; their image sizes are in info.metadata['sizes'], the training split's
  normalisation statistics in info.metadata['normalization'].
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images from a local folder, at their own size.'}
  code_path = None  # As SegmentationFolder: no checksums to find.

  def first_image(self) -> Optional[str]:
    return next((path for _, path in split_files(self.builder_config)['train'][:1]), None)

  def _info(self) -> tfds.core.DatasetInfo:
    config: ImageFolderConfig = self.builder_config
    return LocalDatasetInfo(
        builder=self,
        description=config.description,
        features=tfds.features.FeaturesDict({'image': local.image_feature(config.channels,
                                                                          self.stored_dtype()),
                                             'file_name': tfds.features.Text()}),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager  # Nothing to download.
    config: ImageFolderConfig = self.builder_config
    splits = split_files(config)
    dtype = self.stored_dtype()
    read = lambda item: (read_image(item[1], config, transform=False), item[1])
    sizes, self.info.metadata['normalization'] = local.check_and_measure(
        splits, read, dtype, config.channels, config.max_size)
    return local.plan_shards(self.info, splits, sizes, _ReadImage(config),
                             config.channels * np.dtype(dtype).itemsize)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Stored examples of any size -> {'image': float32 [B, H, W, C] normalised ('unit': in
  [0, 1]; data.normalize)} of `size` by the deterministic fit of `mode` (data.sizing.fit); with
  `binarize`, dynamic binarisation as for Fashion-MNIST (data.scale_images: 'image' drawn from
  rngs, 'clean_image' kept)."""
  size: Tuple[int, int]
  mode: str
  binarize: bool = False
  normalization: normalize.Normalization = normalize.Normalization()

  def __call__(self, examples, rngs) -> Dict[str, np.ndarray]:
    images = sizing.fit({'image': examples['image']}, self.size, self.mode)
    return scale_images(images, rngs, self.binarize, self.normalization)


FIELDS = ('images_dir', 'image_size', 'channels', 'resize', 'split', 'test_fraction',
          'split_seed', 'max_size', 'normalize')


def prepare(config: ImageFolderConfig, tfds_dir: Optional[str] = None) -> ImageFolder:
  """Checks every file, then builds the dataset once (see data.local.prepare).

  Raises:
    UserInputError: naming the offending file or config key (nothing written).
  """
  return local.prepare(ImageFolder(config=config, data_dir=tfds_dir or None,
                                   file_format='array_record'))


def load(data_config: Mapping):
  """Prepares (once) and loads the image folder described by config.data.

  Args:
    data_config: mapping with images_dir and optionally the other ImageFolderConfig fields,
      tfds_dir and cache.

  Returns:
    segae_jax.data.Dataset named 'image_folder' ('image' [h, w, C] as stored, at each image's
    own size; num_classes 0: no masks).

  Raises:
    UserInputError: a bad setting or file, naming it.
  """
  config = local.config_from_mapping(data_config, ImageFolderConfig, FIELDS, ('images_dir',))
  builder = prepare(config, data_config.get('tfds_dir') or None)
  sources, sizes = local.checked_sources(builder, config, 'image_folder')
  normalization = local.normalization_of(builder, config.normalize, 'image_folder')
  binarize = bool(data_config.get('binarize', False))
  if binarize and normalization.mode != 'unit':
    raise UserInputError(f"config.data.binarize draws pixels from intensities in [0, 1]: it needs "
                         f"config.data.normalize='unit', not {normalization.mode!r}")
  splits = {name: hold(sources[name], data_config.get('cache', 'auto'), keys=('image',))
            for name in local.SPLITS}
  return Dataset(name='image_folder', train=splits['train'], test=splits['test'],
                 image_shape=config.image_size + (config.channels,), num_classes=0,
                 class_names=(), preprocess=Preprocess(config.image_size, config.resize,
                                                       binarize, normalization),
                 resize=config.resize, sizes=sizes, normalization=normalization)
