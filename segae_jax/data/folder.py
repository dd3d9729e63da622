"""The user's own images and label masks, as a tensorflow-datasets builder (`segmentation_folder`).

Layout: every image in `images_dir` has a mask of the same file stem in `masks_dir`
(`cat_01.jpg` <-> `cat_01.png`); extensions .png .jpg .jpeg .tif .tiff .bmp in any case. Masks are
single-channel integer label images (mode L, P or I, 8 to 32 bits): pixel value = class id in
[0, num_classes), or with mask_mode='foreground' an instance label image (0 background, any
other value foreground).
With split='folders' the same layout sits in `train/` and `test/` subfolders of both folders; with
split='fraction' one flat folder is split at random, seeded. `unlabeled_dir` (optional, searched
recursively) holds images without masks for semi-supervised training: they become the split
'unlabeled' and join every training batch (config.data.unlabeled_per_batch of them).

Every file is opened, decoded and checked before tfds writes anything, so a bad file stops the
build with one line naming it, and nothing half-built is left behind. Images and masks are stored
at their own size (the long side capped at `max_size` if set, aspect kept; data.local), so the
training size (`image_size`) and how images reach it (`resize`) are the input pipeline's business
and can change without preparing again. The prepared dataset lives in
`<tfds_dir>/segmentation_folder/<config name>/2.0.0`, where the config name is a hash of the
settings that change what is stored (absolute paths included). Files added to or changed in the
folders later are NOT noticed: a prepared config is reused as it is (delete its folder to rebuild).

Image reading (data.images.read_pixels; the same for checking and writing):
  - 8-bit files through Pillow: grayscale (modes 1, L, LA) counts as 1 channel, colour (RGB,
    RGBA, P, PA, CMYK, YCbCr) as 3; alpha dropped when every pixel is fully opaque, refused
    otherwise. TIFFs through tifffile: 16-bit, float, and any channel count (samples last, or one
    page per channel); 16-bit and float PNGs too. An image whose channel count differs from
    `channels` is refused, never silently converted; so are NaN pixels, other frame layouts,
    and a dataset mixing bit depths.
  - stored losslessly in its own dtype (uint8, uint16, float32; data.local.image_feature), and
    normalised in the input pipeline by `normalize` ('unit', 'zscore', 'percentile';
    data.normalize) with the training split's per-channel statistics, computed while the files
    are checked and kept in the dataset's metadata ('normalization').
  - masks: 8 to 32-bit integer label images (Pillow; TIFF through tifffile); EXIF orientation is
    ignored (pixels as stored, which is how masks drawn on the stored pixels line up).
  - resize='resize': the whole image (evaluation) or a random resized crop of it (training) goes
    to image_size, image bilinear, mask nearest. resize='center_crop': the central (evaluation)
    or a random (training) image_size window; images smaller than it are refused.
"""
import dataclasses
import json
import logging
import os
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from segae_jax import batch as batch_lib
from segae_jax.data import fingerprint, local, normalize, sizing
from segae_jax.data.images import (list_image_files, one_line, read_label_image,
                                   read_pixels)
from segae_jax.data.dataset import Dataset
from segae_jax.data.sources import hold
from segae_jax.data.info import LocalDatasetInfo
from segae_jax.errors import UserInputError

log = logging.getLogger(__name__)

SPLITS = local.SPLITS
UNLABELED = 'unlabeled'
MAX_CLASSES = 256  # Masks are stored as uint8.
MASK_READINGS = ('classes', 'foreground')  # config.data.mask_mode.
# What an unlabelled example stores as its mask: the feature exists in every split.
NO_MASK = np.zeros((1, 1), np.uint8)


@dataclasses.dataclass(eq=False, kw_only=True)
class FolderConfig(tfds.core.BuilderConfig):
  """Where the images and masks are, and what the input pipeline makes of them.

  Attributes:
    images_dir: folder of images (with split='folders': holding train/ and test/).
    masks_dir: folder of masks, same file stems (and the same train/ and test/ subfolders).
    num_classes: label values must lie in [0, num_classes); at most 256 (uint8 masks).
    image_size: (height, width) the model sees (not stored: the pipeline crops or resizes).
    channels: 1 (grayscale), 3 (colour), or any count (TIFF stacks, multi-channel arrays);
      images with another count are refused.
    class_names_file: optional text file, one class name per line (blank lines ignored), exactly
      num_classes names.
    resize: 'resize' or 'center_crop' (data.sizing; not stored).
    split: 'fraction' (random split of one folder) or 'folders' (train/ and test/ subfolders).
    test_fraction: with split='fraction', round(test_fraction * N) images go to test.
    split_seed: with split='fraction', seeds the permutation that picks the test images.
    max_size: > 0 caps the long side of stored images and masks at this many pixels (aspect
      kept); 0 stores them at their own size.
    unlabeled_dir: optional folder (searched recursively) of images without masks.
    mask_mode: 'classes' (a mask pixel is its class id) or 'foreground' (an instance label
      image: 0 background, every other value, e.g. instance ids 1..N of 8 or 16 bits, class 1;
      needs num_classes=2).
    normalize: 'unit', 'zscore' or 'percentile' (data.normalize; not stored: the statistics of
      every mode are).
    ignore_label: -1 (none), or a mask value in [num_classes, 255] that marks pixels of unknown
      class (pseudo-labels left out, unannotated regions): stored as it is, and the losses and
      metrics skip it as they skip every value outside [0, num_classes).

  `name` is set from a hash of the stored settings (`settings()`, paths made absolute first),
  whatever is passed.

  Raises:
    UserInputError: a field has the wrong type or value (naming config.data.<field>).
  """
  name: str = ''
  images_dir: str
  masks_dir: str
  num_classes: int
  image_size: Tuple[int, int] = (64, 64)
  channels: int = 3
  class_names_file: str = ''
  resize: str = 'resize'
  split: str = 'fraction'
  test_fraction: float = 0.2
  split_seed: int = 0
  max_size: int = 0
  unlabeled_dir: str = ''
  mask_mode: str = 'classes'
  normalize: str = 'unit'
  ignore_label: int = -1

  def __post_init__(self):
    local.check_paths(self, ('images_dir', 'masks_dir'), ('class_names_file', 'unlabeled_dir'))
    if self.unlabeled_dir and self.unlabeled_dir in (self.images_dir, self.masks_dir):
      which = 'images_dir' if self.unlabeled_dir == self.images_dir else 'masks_dir'
      raise UserInputError(f'config.data.unlabeled_dir {self.unlabeled_dir} is also '
                           f'config.data.{which}; unlabelled images need a folder of their own')
    local.check_common(self)
    if not local.is_int(self.num_classes) or not 2 <= self.num_classes <= MAX_CLASSES:
      raise UserInputError(f'config.data.num_classes must be an integer in [2, {MAX_CLASSES}] '
                           f'(masks are uint8), got {self.num_classes!r}')
    self.num_classes = int(self.num_classes)
    if self.mask_mode not in MASK_READINGS:
      raise UserInputError(f'config.data.mask_mode={self.mask_mode!r}; expected one of '
                           f'{", ".join(MASK_READINGS)}')
    if self.mask_mode == 'foreground' and self.num_classes != 2:
      raise UserInputError(f"config.data.mask_mode='foreground' makes 2 classes (background, "
                           f'foreground); config.data.num_classes is {self.num_classes}')
    if not local.is_int(self.ignore_label) or not (
        self.ignore_label == -1 or self.num_classes <= self.ignore_label < MAX_CLASSES):
      raise UserInputError(f'config.data.ignore_label must be -1 (none) or in '
                           f'[num_classes={self.num_classes}, {MAX_CLASSES - 1}], '
                           f'got {self.ignore_label!r}')
    self.ignore_label = int(self.ignore_label)
    self.name = local.config_name('folder', self.settings())
    if self.description is None:
      self.description = 'Images and masks from ' + json.dumps(self.settings(), sort_keys=True)

  def settings(self) -> Dict[str, object]:
    """The fields that define what is stored (what the config name hashes), JSON-serialisable."""
    return {'images_dir': self.images_dir, 'masks_dir': self.masks_dir,
            'channels': self.channels, 'num_classes': self.num_classes,
            'class_names_file': self.class_names_file, 'split': self.split,
            'test_fraction': self.test_fraction, 'split_seed': self.split_seed,
            'max_size': self.max_size, 'unlabeled_dir': self.unlabeled_dir,
            # Only when not the default: datasets prepared before the field keep their names.
            **({'mask_mode': self.mask_mode} if self.mask_mode != 'classes' else {}),
            **({'ignore_label': self.ignore_label} if self.ignore_label != -1 else {})}


def read_class_names(config: FolderConfig) -> Tuple[str, ...]:
  """Class names from config.class_names_file, or ('class_0', ..., 'class_{n-1}') without one.

  Raises:
    UserInputError: the file is missing or unreadable, or holds other than num_classes names.
  """
  if not config.class_names_file:
    return tuple(f'class_{i}' for i in range(config.num_classes))
  path = config.class_names_file
  try:
    with open(path, encoding='utf-8') as f:
      names = tuple(line.strip() for line in f.read().splitlines() if line.strip())
  except (OSError, UnicodeDecodeError) as e:
    raise UserInputError(f'{path}: cannot read class names file ({one_line(e)})') from None
  if len(names) != config.num_classes:
    raise UserInputError(f'{path}: {len(names)} class names (one per non-blank line) but '
                         f'config.data.num_classes is {config.num_classes}')
  if len(set(names)) != len(names):
    duplicate = next(n for n in names if names.count(n) > 1)
    raise UserInputError(f'{path}: class name {duplicate!r} appears more than once')
  return names


def _unlabeled(config: FolderConfig, mask_stems: set) -> List[Tuple[str, str, str]]:
  """[(key, image path, '')] of unlabeled_dir; an image whose stem has a mask is refused."""
  files = list_image_files(config.unlabeled_dir, 'unlabeled image', recursive=True)
  for key, path in files.items():
    stem = key.rsplit('/', 1)[-1]
    if stem in mask_stems:
      raise UserInputError(f'{path}: unlabeled image has a mask ({stem}.<ext> in '
                           f'{config.masks_dir}); move it to images_dir or rename it')
  return [(key, path, '') for key, path in files.items()]


def split_files(config: FolderConfig) -> Dict[str, List[Tuple[str, str, str]]]:
  """{'train': [(stem, image path, mask path)], 'test': [...]} each sorted by stem, and
  'unlabeled': [(key, image path, '')] when config.unlabeled_dir is set.

  split='fraction': round(test_fraction * N) pairs, picked by a permutation seeded with
  split_seed, go to test and the rest to train. split='folders': the train/ and test/ subfolders.

  Raises:
    UserInputError: missing folders or files, unmatched stems, an empty split, or an unlabelled
      image that has a mask.
  """
  if config.split == 'folders':
    splits = {s: fingerprint.pair_files(os.path.join(config.images_dir, s),
                                  os.path.join(config.masks_dir, s))
              for s in SPLITS}
  else:
    splits = local.split_by_fraction(fingerprint.pair_files(config.images_dir, config.masks_dir),
                                     config.test_fraction, config.split_seed, config.images_dir)
  if config.unlabeled_dir:
    stems = {stem for pairs in splits.values() for stem, _, _ in pairs}
    splits[UNLABELED] = _unlabeled(config, stems)
  return splits


def _mask_array(labels: np.ndarray, path: str, num_classes: int,
                mask_mode: str = 'classes', ignore_label: int = -1) -> np.ndarray:
  """int [height, width] label values -> uint8 class ids in [0, num_classes) (and
  `ignore_label`, kept); with mask_mode='foreground' every non-zero value is class 1."""
  if mask_mode == 'foreground':  # Instance ids (or any non-zero label) -> foreground.
    labels = np.where(labels == ignore_label, ignore_label, labels != 0).astype(np.int64)
  known = labels[labels != ignore_label]
  low, high = int(known.min(initial=0)), int(known.max(initial=0))
  if low < 0:
    raise UserInputError(f'{path}: label value {low} is negative; labels must be in '
                         f'[0, {num_classes})')
  if high >= num_classes:
    raise UserInputError(f'{path}: label value {high} >= config.data.num_classes '
                         f'({num_classes}); labels must be in [0, {num_classes})')
  return labels.astype(np.uint8)


def read_example(image_path: str, mask_path: str, config: FolderConfig,
                 transform: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """Reads and checks one image/mask pair (mask_path '' for an unlabelled image).

  Returns:
    image [height, width, channels] (uint8, uint16 or float32: data.images.read_pixels) and
    mask uint8 [height, width] (None without a mask): with `transform` as stored (capped at
    config.max_size), else at the files' own size.

  Raises:
    UserInputError: naming the file and the problem (unreadable, wrong mode or channel count,
      transparent pixels, sizes differ, label out of range, smaller than the crop of
      resize='center_crop').
  """
  image = read_pixels(image_path, config.channels)
  mask = None
  h, w = batch_lib.spatial_shape(image, leading=0)
  if mask_path:
    mask = _mask_array(read_label_image(mask_path), mask_path, config.num_classes,
                       config.mask_mode, config.ignore_label)
    if mask.shape != (h, w):
      raise UserInputError(f'{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} '
                           f'(height x width) but its image {image_path} is {h}x{w}')
  local.check_stored_fits(config, h, w, image_path)
  if not transform:
    return image, mask
  return local.capped(image, mask, config.max_size)


@dataclasses.dataclass(frozen=True)
class _ReadPair:
  """(stem, image path, mask path) -> the stored example (tfds encodes the PNGs)."""
  config: FolderConfig

  def __call__(self, item) -> Dict[str, object]:
    stem, image_path, mask_path = item
    image, mask = read_example(image_path, mask_path, self.config)
    return {'image': local.encode_image(image),
            'segmentation': local.png(NO_MASK if mask is None else mask),
            'file_name': stem}


class SegmentationFolder(tfds.core.ShardBasedBuilder, local.StoredDtype):
  """Images with label masks from the user's folders (see FolderConfig).

  Features: 'image' [height, width, channels] (8-bit grayscale or colour as PNG; other images as
  zlib arrays of their dtype: data.local.image_feature) and 'segmentation' uint8 [height, width,
  1] (class ids, PNG), at the image's own size (capped at max_size), 'file_name' the file stem.
  Splits 'train' and 'test' (and 'unlabeled', masks 1x1 zeros), in file order; the image sizes of
  each split are in info.metadata['sizes'] (data.local.size_summary), the training split's
  normalisation statistics in info.metadata['normalization'] (datasets prepared before it: none).
  """

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images and masks from local folders, resized or centre-cropped.',
                   '2.0.0': 'Stored at their own size as PNG; an optional unlabeled split.'}
  # tfds uses the code path only to find a checksums file for downloads (there are none here);
  # its lookup raises NotADirectoryError under the editable install when run outside the repo.
  code_path = None

  def first_image(self) -> Optional[str]:
    # The images folder alone: pairing the masks and listing unlabeled_dir is the checks' work,
    # not that of every construction of the builder.
    config: FolderConfig = self.builder_config
    images = (os.path.join(config.images_dir, 'train') if config.split == 'folders'
              else config.images_dir)
    return next(iter(list_image_files(images, 'image').values()), None)

  def _info(self) -> tfds.core.DatasetInfo:
    config: FolderConfig = self.builder_config
    # Built outside tfds's catalog: DatasetInfo is returned directly (no metadata folder).
    return LocalDatasetInfo(
        builder=self,
        description=config.description,
        features=tfds.features.FeaturesDict({
            'image': local.image_feature(config.channels, self.stored_dtype()),
            'segmentation': local.image_feature(1),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'segmentation'),
        disable_shuffling=True,  # Keep the file order (the pipeline shuffles).
        metadata=tfds.core.MetadataDict(),
    )

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager  # Nothing to download.
    config: FolderConfig = self.builder_config
    read_class_names(config)
    splits = split_files(config)
    dtype = self.stored_dtype()
    read = lambda item: (read_example(item[1], item[2], config, transform=False)[0], item[1])
    sizes, self.info.metadata['normalization'] = local.check_and_measure(
        splits, read, dtype, config.channels, config.max_size)
    return local.plan_shards(self.info, splits, sizes, _ReadPair(config),
                             config.channels * np.dtype(dtype).itemsize + 1)


def prepare(config: FolderConfig, tfds_dir: Optional[str] = None) -> SegmentationFolder:
  """Checks every file, then builds the array_record dataset once, and returns the builder.

  An already prepared config is reused without looking at the folders again. On any failure,
  including an interrupt while writing, no dataset folder and no incomplete.* folder of this
  attempt is left.

  Raises:
    UserInputError: naming the offending file or config key (nothing written).
  """
  return local.prepare(SegmentationFolder(config=config, data_dir=tfds_dir or None,
                                          file_format='array_record'))


FIELDS = ('images_dir', 'masks_dir', 'num_classes', 'image_size', 'channels', 'class_names_file',
          'resize', 'split', 'test_fraction', 'split_seed', 'max_size', 'unlabeled_dir',
          'mask_mode', 'normalize', 'ignore_label')


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Stored examples of any size -> {'image': float32 [B, H, W, C] normalised ('unit': in [0, 1];
  data.normalize), 'segmentation': int32 [B, H, W] (when the examples have masks)} of `size` by
  the deterministic fit of `mode` (data.sizing.fit: the training crops happen before, in
  data.augment). `rngs` is unused."""
  size: Tuple[int, int]
  mode: str
  normalization: normalize.Normalization = normalize.Normalization()

  def __call__(self, examples, rngs) -> Dict[str, np.ndarray]:
    del rngs  # Deterministic.
    examples = sizing.fit(examples, self.size, self.mode)
    batch = {'image': self.normalization(examples['image'])}
    if 'segmentation' in examples:  # An unlabelled pool's examples have none.
      masks = examples['segmentation']
      batch['segmentation'] = masks.reshape(batch_lib.pixels_shape(masks)).astype(np.int32)
    return batch


def resolve_unset(data_config: Mapping) -> Mapping:
  """data_config with the fields it leaves None that the files decide (fingerprint.DATA_FIELDS)
  inferred, for a dataset built outside a training run (a run resolves them first, with its
  model's downsampling: training.validation.resolve_auto); logs what was inferred.

  Raises:
    UserInputError: as fingerprint.plan.
  """
  if all(data_config.get(key) is not None for key in fingerprint.DATA_FIELDS):
    return data_config
  fp, values = fingerprint.plan(data_config, fingerprint.downsampling_multiple(4, True))
  log.info('%s', fingerprint.summary(fp, values))
  return {**data_config, **values}


def load(data_config: Mapping):
  """Prepares (once) and loads the folder dataset described by config.data.

  Args:
    data_config: mapping with images_dir, masks_dir and optionally the other FolderConfig
      fields (None: inferred from the files, resolve_unset), tfds_dir (default
      ~/tensorflow_datasets) and cache.

  Returns:
    segae_jax.data.Dataset named 'segmentation_folder' whose splits are held in memory or
    streamed from disk (data_config cache: 'auto', 'memory', 'stream'; see data.pipeline.hold):
    'image' [h, w, C] (uint8, uint16 or float32, as stored) and 'segmentation' uint8 [h, w, 1]
    at each image's own size, and
    `unlabeled` ('image' only) when unlabeled_dir is set.

  Raises:
    UserInputError: a bad setting or file, naming it; with resize='center_crop', a split whose
      smallest stored image is smaller than image_size.
  """
  data_config = resolve_unset(data_config)
  config = local.config_from_mapping(data_config, FolderConfig, FIELDS,
                                     ('images_dir', 'masks_dir', 'num_classes'))
  class_names = read_class_names(config)
  builder = prepare(config, data_config.get('tfds_dir') or None)
  sources, sizes = local.checked_sources(builder, config, 'segmentation_folder')
  normalization = local.normalization_of(builder, config.normalize, 'segmentation_folder')
  cache = data_config.get('cache', 'auto')
  splits = {name: hold(sources[name], cache, keys=('image', 'segmentation')) for name in SPLITS}
  unlabeled = hold(sources[UNLABELED], cache, keys=('image',)) if config.unlabeled_dir else None
  return Dataset(name='segmentation_folder', train=splits['train'], test=splits['test'],
                 image_shape=config.image_size + (config.channels,),
                 num_classes=config.num_classes, class_names=class_names,
                 preprocess=Preprocess(config.image_size, config.resize, normalization),
                 unlabeled=unlabeled, resize=config.resize, sizes=sizes,
                 normalization=normalization)
