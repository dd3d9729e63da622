"""The user's own images and label masks, as a tensorflow-datasets builder (`segmentation_folder`).

Layout: every image in `images_dir` has a mask of the same file stem in `masks_dir`
(`cat_01.jpg` <-> `cat_01.png`); extensions .png .jpg .jpeg .tif .tiff in any case. Masks are
single-channel integer label images (mode L, P, I or 1): pixel value = class id in
[0, num_classes). With split='folders' the same layout sits in `train/` and `test/` subfolders of
both folders; with split='fraction' one flat folder is split at random, seeded.

Every file is opened, decoded and checked before tfds writes anything, so a bad file stops the
build with one line naming it, and nothing half-built is left behind. The prepared dataset lives in
`<tfds_dir>/segmentation_folder/<config name>/1.0.0`, where the config name is a hash of every
setting (absolute paths included): other folders or settings prepare into other folders. Files
added to or changed in the folders later are NOT noticed: a prepared config is reused as it is
(delete its folder to rebuild).

Image conversion (same for validation and writing):
  - grayscale (modes 1, L, LA) counts as 1 channel; colour (RGB, RGBA, P, PA, CMYK, YCbCr) as 3.
    An image whose channel count differs from `channels` is refused, never silently converted.
  - alpha: dropped when every pixel is fully opaque, refused otherwise (the colour under
    transparent pixels is arbitrary).
  - 16-bit, 32-bit and float images are refused (no unambiguous scaling to uint8).
  - multi-frame files (TIFF stacks) are refused; EXIF orientation is ignored (pixels as stored,
    which is how masks drawn on the stored pixels line up).
  - resize='resize': image bilinear, mask nearest neighbour, to image_size (aspect ratio not kept).
    resize='center_crop': the central image_size window of both; smaller images are refused.
"""
import dataclasses
import hashlib
import json
import numbers
import os
import shutil
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segae_jax.data.pipeline import hold, unit_float
from segae_jax.errors import UserInputError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff')
RESIZE_MODES = ('resize', 'center_crop')
SPLIT_MODES = ('fraction', 'folders')
SPLITS = ('train', 'test')
MAX_CLASSES = 256  # Masks are stored as uint8.
GRAY_MODES = ('1', 'L', 'LA')
COLOUR_MODES = ('RGB', 'RGBA', 'P', 'PA', 'CMYK', 'YCbCr')
ALPHA_MODES = ('LA', 'RGBA', 'PA')
# np.asarray gives one integer per pixel for these ('1' -> bool, I;16* -> uint16, I -> int32).
MASK_MODES = ('1', 'L', 'P', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N')


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _abspath(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


@dataclasses.dataclass(eq=False, kw_only=True)
class FolderConfig(tfds.core.BuilderConfig):
  """Where the images and masks are and how to turn them into fixed-size arrays.

  Attributes:
    images_dir: folder of images (with split='folders': holding train/ and test/).
    masks_dir: folder of masks, same file stems (and the same train/ and test/ subfolders).
    num_classes: label values must lie in [0, num_classes); at most 256 (uint8 masks).
    image_size: (height, width) of the stored examples.
    channels: 1 (grayscale) or 3 (colour); images with the other count are refused.
    class_names_file: optional text file, one class name per line (blank lines ignored), exactly
      num_classes names.
    resize: 'resize' (image bilinear, mask nearest) or 'center_crop'.
    split: 'fraction' (random split of one folder) or 'folders' (train/ and test/ subfolders).
    test_fraction: with split='fraction', round(test_fraction * N) images go to test.
    split_seed: with split='fraction', seeds the permutation that picks the test images.

  `name` is set from a hash of all the fields above (paths made absolute first), whatever is
  passed. Paths are stored absolute.

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

  def __post_init__(self):
    for key in ('images_dir', 'masks_dir', 'class_names_file'):
      if not isinstance(getattr(self, key), (str, os.PathLike)):
        raise UserInputError(f'config.data.{key} must be a path, got {getattr(self, key)!r}')
    for key in ('images_dir', 'masks_dir'):
      if not str(getattr(self, key)):
        raise UserInputError(f'config.data.{key} must be set (a folder of images)')
      setattr(self, key, _abspath(os.fspath(getattr(self, key))))
    if self.class_names_file:
      self.class_names_file = _abspath(os.fspath(self.class_names_file))
    size = self.image_size
    if (not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2
        or not all(_is_int(s) and s > 0 for s in size)):
      raise UserInputError(f'config.data.image_size must be (height, width), two positive '
                           f'integers, got {size!r}')
    self.image_size = (int(size[0]), int(size[1]))
    if self.channels not in (1, 3) or not _is_int(self.channels):
      raise UserInputError(f'config.data.channels must be 1 or 3, got {self.channels!r}')
    if not _is_int(self.num_classes) or not 2 <= self.num_classes <= MAX_CLASSES:
      raise UserInputError(f'config.data.num_classes must be an integer in [2, {MAX_CLASSES}] '
                           f'(masks are uint8), got {self.num_classes!r}')
    if self.resize not in RESIZE_MODES:
      raise UserInputError(f'unknown config.data.resize {self.resize!r}; known: '
                           f'{", ".join(RESIZE_MODES)}')
    if self.split not in SPLIT_MODES:
      raise UserInputError(f'unknown config.data.split {self.split!r}; known: '
                           f'{", ".join(SPLIT_MODES)}')
    if (not isinstance(self.test_fraction, numbers.Real) or isinstance(self.test_fraction, bool)
        or not 0.0 < self.test_fraction < 1.0):
      raise UserInputError(f'config.data.test_fraction must be in (0, 1), got '
                           f'{self.test_fraction!r}')
    if not _is_int(self.split_seed) or self.split_seed < 0:
      raise UserInputError(f'config.data.split_seed must be a non-negative integer, got '
                           f'{self.split_seed!r}')
    self.num_classes, self.channels = int(self.num_classes), int(self.channels)
    self.test_fraction, self.split_seed = float(self.test_fraction), int(self.split_seed)
    fields = self.settings()
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    self.name = f'folder_{digest[:12]}'
    if self.description is None:
      self.description = 'Images and masks from ' + json.dumps(fields, sort_keys=True)

  def settings(self) -> Dict[str, object]:
    """The fields that define the dataset (what the config name hashes), JSON-serialisable."""
    return {'images_dir': self.images_dir, 'masks_dir': self.masks_dir,
            'image_size': list(self.image_size), 'channels': self.channels,
            'num_classes': self.num_classes, 'class_names_file': self.class_names_file,
            'resize': self.resize, 'split': self.split, 'test_fraction': self.test_fraction,
            'split_seed': self.split_seed}


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
    raise UserInputError(f'{path}: cannot read class names file ({_one_line(e)})') from None
  if len(names) != config.num_classes:
    raise UserInputError(f'{path}: {len(names)} class names (one per non-blank line) but '
                         f'config.data.num_classes is {config.num_classes}')
  if len(set(names)) != len(names):
    duplicate = next(n for n in names if names.count(n) > 1)
    raise UserInputError(f'{path}: class name {duplicate!r} appears more than once')
  return names


def _one_line(error: BaseException) -> str:
  return ' '.join(f'{type(error).__name__}: {error}'.split())


def _list_images(directory: str, what: str) -> Dict[str, str]:
  """{file stem: full path} of the image files directly inside `directory`, sorted by stem.

  Raises:
    UserInputError: the folder is missing, holds no image files, or two files share a stem.
  """
  if not os.path.isdir(directory):
    raise UserInputError(f'{directory}: {what} folder does not exist')
  files: Dict[str, str] = {}
  for entry in sorted(os.listdir(directory)):
    stem, ext = os.path.splitext(entry)
    path = os.path.join(directory, entry)
    # Hidden files (macOS '._x.png' resource forks) are not images even with an image extension.
    if entry.startswith('.') or ext.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(path):
      continue
    if stem in files:
      raise UserInputError(f'{path}: same file stem as {files[stem]}; images and masks are '
                           f'matched by stem, so each stem must appear once')
    files[stem] = path
  if not files:
    raise UserInputError(f'{directory}: no {what} files ({" ".join(IMAGE_EXTENSIONS)}) in the '
                         f'folder')
  return dict(sorted(files.items()))


def _pair(images_dir: str, masks_dir: str) -> List[Tuple[str, str, str]]:
  """[(stem, image path, mask path)] sorted by stem; every image must have a mask and back."""
  images = _list_images(images_dir, 'image')
  masks = _list_images(masks_dir, 'mask')
  for stem, path in images.items():
    if stem not in masks:
      raise UserInputError(f'{path}: image without a mask (no {stem}.<ext> in {masks_dir})')
  for stem, path in masks.items():
    if stem not in images:
      raise UserInputError(f'{path}: mask without an image (no {stem}.<ext> in {images_dir})')
  return [(stem, images[stem], masks[stem]) for stem in images]


def split_files(config: FolderConfig) -> Dict[str, List[Tuple[str, str, str]]]:
  """{'train': [(stem, image path, mask path)], 'test': [...]}, each sorted by stem.

  split='fraction': round(test_fraction * N) pairs, picked by a permutation seeded with
  split_seed, go to test and the rest to train. split='folders': the train/ and test/ subfolders.

  Raises:
    UserInputError: missing folders or files, unmatched stems, or an empty split.
  """
  if config.split == 'folders':
    return {s: _pair(os.path.join(config.images_dir, s), os.path.join(config.masks_dir, s))
            for s in SPLITS}
  pairs = _pair(config.images_dir, config.masks_dir)
  num_test = int(len(pairs) * config.test_fraction + 0.5)  # Round half up, not to even.
  if num_test == 0 or num_test == len(pairs):
    empty = 'test' if num_test == 0 else 'train'
    raise UserInputError(f'{config.images_dir}: {len(pairs)} image(s) with test_fraction '
                         f'{config.test_fraction} leave the {empty} split empty; add images or '
                         f'change config.data.test_fraction')
  is_test = np.zeros(len(pairs), bool)
  is_test[np.random.default_rng(config.split_seed).permutation(len(pairs))[:num_test]] = True
  return {'train': [p for p, t in zip(pairs, is_test) if not t],
          'test': [p for p, t in zip(pairs, is_test) if t]}


def _open(path: str, what: str) -> Image.Image:
  """Opens and fully decodes one file (a truncated file fails here, not later)."""
  try:
    with Image.open(path) as image:
      image.load()
      frames = getattr(image, 'n_frames', 1)
  # Pillow's format plugins raise many exception types on malformed data (OSError, SyntaxError,
  # ValueError, struct.error, DecompressionBombError, ...); all mean "this file is unusable".
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(f'{path}: cannot read {what} ({_one_line(e)})') from None
  if frames != 1:
    raise UserInputError(f'{path}: {what} file holds {frames} frames; expected one image per file')
  return image


def _image_array(image: Image.Image, path: str, channels: int) -> np.ndarray:
  """PIL image -> uint8 [height, width, channels], refusing what cannot convert without loss."""
  mode = image.mode
  if mode == 'P' and 'transparency' in image.info:
    mode = 'PA'  # A palette with a transparent index is an alpha channel in disguise.
  if mode in GRAY_MODES:
    found, target = 1, 'L'
  elif mode in COLOUR_MODES:
    found, target = 3, 'RGB'
  else:
    raise UserInputError(f'{path}: image mode {image.mode} is not supported; expected an 8-bit '
                         f'grayscale or colour image (16-bit and float images need converting)')
  if found != channels:
    kind = 'grayscale' if found == 1 else 'colour'
    raise UserInputError(f'{path}: image has {found} channel(s) ({kind}, mode {image.mode}) but '
                         f'config.data.channels is {channels}')
  if mode in ALPHA_MODES:
    with_alpha = np.asarray(image.convert(target + 'A'))
    if with_alpha[..., -1].min() < 255:
      raise UserInputError(f'{path}: image has transparent pixels (mode {image.mode}); expected an '
                           f'opaque image (only a fully opaque alpha channel is dropped)')
    array = with_alpha[..., :-1]
  else:
    array = np.asarray(image.convert(target))
  return array.reshape(array.shape[:2] + (channels,))


def _mask_array(mask: Image.Image, path: str, num_classes: int) -> np.ndarray:
  """PIL label image -> uint8 [height, width] of class ids in [0, num_classes)."""
  if mask.mode not in MASK_MODES:
    raise UserInputError(f'{path}: mask has mode {mask.mode} ({len(mask.getbands())} channels); '
                         f'expected a single-channel label image (mode L, P or I) of class ids')
  labels = np.asarray(mask).astype(np.int64)
  low, high = int(labels.min()), int(labels.max())
  if low < 0:
    raise UserInputError(f'{path}: label value {low} is negative; labels must be in '
                         f'[0, {num_classes})')
  if high >= num_classes:
    raise UserInputError(f'{path}: label value {high} >= config.data.num_classes '
                         f'({num_classes}); labels must be in [0, {num_classes})')
  return labels.astype(np.uint8)


def read_example(image_path: str, mask_path: str, config: FolderConfig,
                 transform: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """Reads, checks and (with `transform`) resizes or crops one image/mask pair.

  Returns:
    image uint8 [height, width, channels] and mask uint8 [height, width]; of config.image_size
    with `transform`, else of the files' own size.

  Raises:
    UserInputError: naming the file and the problem (unreadable, wrong mode or channel count,
      transparent pixels, sizes differ, label out of range, smaller than the centre crop).
  """
  image = _open(image_path, 'image')
  mask = _open(mask_path, 'mask')
  image_array = _image_array(image, image_path, config.channels)
  mask_array = _mask_array(mask, mask_path, config.num_classes)
  h, w = image_array.shape[:2]
  if mask_array.shape != (h, w):
    raise UserInputError(f'{mask_path}: mask is {mask_array.shape[0]}x{mask_array.shape[1]} '
                         f'(height x width) but its image {image_path} is {h}x{w}')
  height, width = config.image_size
  if config.resize == 'center_crop' and (h < height or w < width):
    raise UserInputError(f'{image_path}: image is {h}x{w} (height x width), smaller than '
                         f'config.data.image_size {height}x{width} needed by center_crop; use '
                         f'resize="resize" or a smaller image_size')
  if not transform or (h, w) == (height, width):
    return image_array, mask_array
  if config.resize == 'center_crop':
    top, left = (h - height) // 2, (w - width) // 2
    return (image_array[top:top + height, left:left + width],
            mask_array[top:top + height, left:left + width])
  pil_image = Image.fromarray(image_array[..., 0] if config.channels == 1 else image_array)
  # Labels are categories: nearest neighbour never invents a class between two others.
  resized_image = np.asarray(pil_image.resize((width, height), Image.Resampling.BILINEAR))
  resized_mask = np.asarray(Image.fromarray(mask_array).resize((width, height),
                                                               Image.Resampling.NEAREST))
  return resized_image.reshape(height, width, config.channels), resized_mask


# Examples per array_record shard: about 256 MiB of raw examples. Each shard is written as its
# examples are read (tfds.core.ShardBasedBuilder), so preparing holds one shard in memory at most;
# GeneratorBasedBuilder would hold a whole split, and past 1 GB spill it through TensorFlow.
SHARD_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class _ShardExamples:
  """The (key, example) pairs of one shard: pairs[start:stop] of a split, read and converted."""
  config: 'FolderConfig'
  pairs: Tuple[Tuple[str, str, str], ...]
  start: int

  def __call__(self):
    for i, (stem, image_path, mask_path) in enumerate(self.pairs, self.start):
      image, mask = read_example(image_path, mask_path, self.config)
      yield i, {'image': image, 'segmentation': mask, 'file_name': stem}


class SegmentationFolder(tfds.core.ShardBasedBuilder):
  """Images with label masks from the user's folders (see FolderConfig).

  Features: 'image' uint8 [height, width, channels], 'segmentation' uint8 [height, width] of class
  ids, 'file_name' the file stem. Splits 'train' and 'test', each in file-stem order, in shards of
  about SHARD_BYTES.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images and masks from local folders, resized or centre-cropped.'}
  # tfds uses the code path only to find a checksums file for downloads (there are none here);
  # its lookup raises NotADirectoryError under the editable install when run outside the repo.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    config: FolderConfig = self.builder_config
    height, width = config.image_size
    # Built outside tfds's catalog: DatasetInfo is returned directly (no metadata folder).
    return tfds.core.DatasetInfo(
        builder=self,
        description=config.description,
        features=tfds.features.FeaturesDict({
            # Raw uint8 tensors, not PNG: no decode on read, and no TensorFlow to encode.
            'image': tfds.features.Tensor(shape=(height, width, config.channels), dtype=np.uint8),
            'segmentation': tfds.features.Tensor(shape=(height, width), dtype=np.uint8),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'segmentation'),
        # Keep the file-stem order (the pipeline shuffles).
        disable_shuffling=True,
    )

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager  # Nothing to download.
    config: FolderConfig = self.builder_config
    read_class_names(config)
    splits = split_files(config)
    # Decode and check every pair before tfds writes the first record: a bad file found halfway
    # through writing would otherwise cost the whole build.
    for pairs in splits.values():
      for _, image_path, mask_path in pairs:
        read_example(image_path, mask_path, config, transform=False)
    height, width = config.image_size
    per_shard = max(1, SHARD_BYTES // (height * width * (config.channels + 1)))
    return {name: [_ShardExamples(config, tuple(pairs[s:s + per_shard]), s)
                   for s in range(0, len(pairs), per_shard)]
            for name, pairs in splits.items()}


def _remove_leftovers(config_dir: str) -> None:
  """Removes incomplete.* build folders in `config_dir`, then the folders left empty."""
  if os.path.isdir(config_dir):
    for entry in os.listdir(config_dir):
      if entry.startswith('incomplete.'):
        shutil.rmtree(os.path.join(config_dir, entry), ignore_errors=True)
  for directory in (config_dir, os.path.dirname(config_dir)):
    try:
      os.rmdir(directory)  # Only succeeds when empty: a prepared dataset is never touched.
    except OSError:
      break


def prepare(config: FolderConfig, tfds_dir: Optional[str] = None) -> SegmentationFolder:
  """Checks every file, then builds the array_record dataset once, and returns the builder.

  An already prepared config is reused without looking at the folders again. On any failure,
  including an interrupt while writing, no dataset folder and no incomplete.* folder is left.

  Raises:
    UserInputError: naming the offending file or config key (nothing written).
  """
  builder = SegmentationFolder(config=config, data_dir=tfds_dir or None,
                               file_format='array_record')
  config_dir = os.fspath(builder.data_path.parent)  # <tfds_dir>/segmentation_folder/<name>
  try:
    builder.download_and_prepare()
  except BaseException:
    # tfds removes its own incomplete folder on an exception; this also clears what a killed
    # earlier attempt left and the empty parents tfds created.
    _remove_leftovers(config_dir)
    raise
  return builder


def _config_from_mapping(data_config: Mapping) -> FolderConfig:
  for key in ('images_dir', 'masks_dir', 'num_classes'):
    if data_config.get(key) in (None, ''):
      raise UserInputError(f'config.data.{key} must be set for dataset segmentation_folder')
  defaults = {f.name: f.default for f in dataclasses.fields(FolderConfig)
              if f.default is not dataclasses.MISSING}
  args = {key: data_config.get(key, defaults.get(key))
          for key in ('images_dir', 'masks_dir', 'num_classes', 'image_size', 'channels',
                      'class_names_file', 'resize', 'split', 'test_fraction', 'split_seed')}
  if args['class_names_file'] is None:
    args['class_names_file'] = ''
  return FolderConfig(**args)


def preprocess(examples, rngs) -> Dict[str, np.ndarray]:
  """uint8 examples -> {'image': float32 [B, H, W, C] in [0, 1], 'segmentation': int32 [B, H, W]}.

  `rngs` (one generator per example) is unused: no stochastic preprocessing.
  """
  del rngs  # Deterministic.
  return {'image': unit_float(examples['image']),
          'segmentation': examples['segmentation'].astype(np.int32)}


def load(data_config: Mapping):
  """Prepares (once) and loads the folder dataset described by config.data.

  Args:
    data_config: mapping with images_dir, masks_dir, num_classes and optionally image_size,
      channels, class_names_file, resize, split, test_fraction, split_seed (FolderConfig's
      defaults) and tfds_dir (default ~/tensorflow_datasets).

  Returns:
    segae_jax.data.Dataset named 'segmentation_folder' whose splits are held in memory or
    streamed from disk (data_config cache: 'auto', 'memory', 'stream'; see data.pipeline.hold)
    ('image' uint8 [N, H, W, C], 'segmentation' uint8 [N, H, W]).

  Raises:
    UserInputError: a bad setting or file, naming it.
  """
  from segae_jax.data import Dataset  # Here: segae_jax.data imports this module to register it.
  config = _config_from_mapping(data_config)
  class_names = read_class_names(config)
  sources = prepare(config, data_config.get('tfds_dir') or None).as_data_source()
  splits = {}
  for name in SPLITS:
    splits[name] = hold(sources[name], data_config.get('cache', 'auto'),
                        keys=('image', 'segmentation'))
  return Dataset(name='segmentation_folder', train=splits['train'], test=splits['test'],
                 image_shape=config.image_size + (config.channels,),
                 num_classes=config.num_classes, class_names=class_names, preprocess=preprocess)
