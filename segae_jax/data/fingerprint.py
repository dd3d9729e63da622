"""A folder dataset's fingerprint, read before anything is prepared, and the settings it implies.

nnU-Net plans a training from a dataset fingerprint (nnUNetv2_plan_and_preprocess: the image
sizes, intensities, classes and number of cases). This is the cheap version for the
segmentation_folder configs: the settings a user leaves unset (None, the folder configs' default)
are inferred from the files, and settings that cannot work with them are refused in one line,
before tfds prepares anything.

  fp = fingerprint.measure(config.data, read_masks=True)
  values = fingerprint.infer_data(config.data, fp, factor=8)   # {'num_classes': 3, ...}

What is read:
  - every image's header only (Pillow opens lazily: mode and size; tifffile: the first series'
    shape, axes and dtype, nothing decoded): the channel count, the stored dtype (uint8, uint16,
    float32, as data.images.read_pixels stores it) and the size;
  - every mask, decoded (data.images.read_label_image), when the class count is to be inferred
    in mask_mode 'classes': the number of classes must be exact, and masks are small, so none is
    sampled.
"""
import dataclasses
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from segae_jax.data import images
from segae_jax.data.images import list_image_files, one_line, read_label_image
from segae_jax.errors import UserInputError

# The fields the folder configs leave to the data (None = inferred) and the run-level ones.
DATA_FIELDS = ('num_classes', 'channels', 'normalize', 'image_size', 'test_fraction')
RUN_FIELDS = ('batch_size', 'eval_batch_size')
TEST_FRACTION = 0.2
MAX_WINDOW = 256             # The longest inferred training window side.
MAX_BATCH = 32
PIXELS_PER_BATCH = 32 * 64 * 64  # The folder config's batch of 32 at 64x64, kept at any size.
MAX_CLASSES = 256            # Masks are stored as uint8.
CHANNEL_NAMES = {1: 'grayscale', 3: 'RGB'}


@dataclasses.dataclass(frozen=True)
class Header:
  """What an image file says without decoding its pixels: channels, stored dtype, size."""
  channels: int
  dtype: str
  height: int
  width: int


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """A folder dataset, measured.

  Attributes:
    num_pairs: image/mask pairs (with split='folders': in train/).
    num_folder_test: with split='folders', the pairs in test/; None with split='fraction'.
    channels: {channel count: the first image file that has it} over every image.
    dtypes: {stored dtype name: the first image file that has it} over every image.
    min_size, median_size, max_size: (height, width) per axis over the labelled images (capped
      at config.data.max_size where set, as they are stored).
    labels: the mask values present, sorted (None when the masks were not read).
    max_label_file: a mask holding the largest label (None when not read).
  """
  num_pairs: int
  num_folder_test: Optional[int]
  channels: Dict[int, str]
  dtypes: Dict[str, str]
  min_size: Tuple[int, int]
  median_size: Tuple[int, int]
  max_size: Tuple[int, int]
  labels: Optional[Tuple[int, ...]] = None
  max_label_file: Optional[str] = None


def pair_files(images_dir: str, masks_dir: str) -> List[Tuple[str, str, str]]:
  """[(stem, image path, mask path)] sorted by stem; every image must have a mask and back.

  Raises:
    UserInputError: a folder is missing or empty, or a file has no partner (naming it).
  """
  image_files = list_image_files(images_dir, 'image')
  masks = list_image_files(masks_dir, 'mask')
  for stem, path in image_files.items():
    if stem not in masks:
      raise UserInputError(f'{path}: image without a mask (no {stem}.<ext> in {masks_dir})')
  for stem, path in masks.items():
    if stem not in image_files:
      raise UserInputError(f'{path}: mask without an image (no {stem}.<ext> in {images_dir})')
  return [(stem, image_files[stem], masks[stem]) for stem in image_files]


def _stored_dtype(dtype) -> str:
  """The dtype data.images.read_pixels stores pixels of `dtype` in."""
  dtype = np.dtype(dtype)
  return dtype.name if dtype in (np.uint8, np.uint16) else (
      'uint8' if dtype == np.bool_ else 'float32')


def _tiff_header(path: str) -> Optional[Header]:
  """A TIFF's header through tifffile, read as data.images reads the pixels; None where Pillow
  reads the file (8-bit palette).

  Every sample of a TIFF counts as a channel, an alpha sample included: tifffile.imwrite marks
  the fourth channel of any [h, w, 4] array as alpha, 16-bit ones too, so the plain way to save
  four channels would otherwise train on three (and an 8-bit file with a varying fourth channel
  would be refused as transparent). A colour TIFF with an opaque alpha is trained as RGB by
  setting config.data.channels=3."""
  import tifffile  # pylint: disable=import-outside-toplevel
  try:
    with tifffile.TiffFile(path) as tif:
      page, series = tif.pages[0], tif.series[0]
      if page.dtype == np.uint8 and page.photometric == tifffile.PHOTOMETRIC.PALETTE:
        return None
      shape, axes, dtype = series.shape, series.axes, series.dtype
  except Exception as e:  # pylint: disable=broad-except (tifffile raises many types)
    raise UserInputError(f'{path}: cannot read image ({one_line(e)})') from None
  shape, axis = images.tiff_layout(shape, axes, path)
  if axis is None:
    return Header(1, _stored_dtype(dtype), *shape)
  if axis == 2:
    return Header(shape[2], _stored_dtype(dtype), shape[0], shape[1])
  return Header(shape[0], _stored_dtype(dtype), shape[1], shape[2])


def read_header(path: str) -> Header:
  """An image file's channels, stored dtype and size, from its header where the format has one
  (Pillow's lazy open; tifffile's series); other Pillow modes are decoded.

  Raises:
    UserInputError: the file is not a readable image (naming it).
  """
  header = _tiff_header(path) if images.is_tiff(path) else None
  if header is not None:
    return header
  try:
    with Image.open(path) as image:
      mode, (width, height) = image.mode, image.size
  except Exception as e:  # pylint: disable=broad-except (Pillow's plugins raise many types)
    raise UserInputError(f'{path}: cannot read image ({one_line(e)})') from None
  if mode in images.GRAY_MODES or mode in images.COLOUR_MODES:
    return Header(1 if mode in images.GRAY_MODES else 3, 'uint8', height, width)
  array = np.asarray(images.open_image(path))  # 16-bit, 32-bit and float modes.
  channels = array.shape[2] if array.ndim == 3 else 1
  return Header(channels, _stored_dtype(array.dtype), height, width)


def _mask_labels(paths: Sequence[str]) -> Tuple[Tuple[int, ...], Optional[str]]:
  """The label values present in the masks `paths`, sorted, and a mask holding the largest."""
  present, largest, where = set(), None, None
  for path in paths:
    labels = read_label_image(path)
    high = int(labels.max())
    if largest is None or high > largest:
      largest, where = high, path
    if int(labels.min()) < 0 or high >= MAX_CLASSES:  # Refused by the class count anyway.
      present.update(np.unique(labels).tolist())
    else:
      present.update(np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).tolist())
  return tuple(sorted(present)), where


def _size_stats(headers: Sequence[Header], max_size: int):
  """(min, median, max) (height, width) per axis of the stored sizes."""
  sizes = np.array([images.capped_size(h.height, h.width, max_size) for h in headers])
  return tuple(tuple(int(v) for v in f(sizes, axis=0)) for f in (np.min, np.median, np.max))


def measure(data_config: Mapping, read_masks: bool) -> Fingerprint:
  """The fingerprint of config.data's folders (images_dir, masks_dir, split, unlabeled_dir,
  max_size), decoding the masks only with `read_masks`.

  Raises:
    UserInputError: a missing or empty folder, an unpaired or unreadable file (naming it).
  """
  if data_config.get('split', 'fraction') == 'folders':
    pairs, test = (pair_files(os.path.join(data_config['images_dir'], s),
                              os.path.join(data_config['masks_dir'], s))
                   for s in ('train', 'test'))
  else:
    pairs, test = pair_files(data_config['images_dir'], data_config['masks_dir']), None
  labelled = pairs + (test or [])
  paths = [image for _, image, _ in labelled]
  if data_config.get('unlabeled_dir'):
    paths += list(list_image_files(data_config['unlabeled_dir'], 'unlabeled image',
                                   recursive=True).values())
  headers = [read_header(path) for path in paths]
  channels, dtypes = {}, {}
  for header, path in zip(headers, paths):
    channels.setdefault(header.channels, path)
    dtypes.setdefault(header.dtype, path)
  labels, where = _mask_labels([m for _, _, m in labelled]) if read_masks else (None, None)
  low, median, high = _size_stats(headers[:len(labelled)], int(data_config.get('max_size') or 0))
  return Fingerprint(num_pairs=len(pairs), num_folder_test=None if test is None else len(test),
                     channels=channels, dtypes=dtypes, min_size=low, median_size=median,
                     max_size=high, labels=labels, max_label_file=where)


def split_sizes(fp: Fingerprint, test_fraction: float) -> Tuple[int, int]:
  """(train, test) image pairs of the split (test_fraction counts with split='fraction' only,
  rounded as data.local.split_by_fraction rounds it)."""
  if fp.num_folder_test is not None:
    return fp.num_pairs, fp.num_folder_test
  num_test = int(fp.num_pairs * test_fraction + 0.5)
  return fp.num_pairs - num_test, num_test


def infer_test_fraction(fp: Fingerprint, images_dir: str) -> float:
  """0.2, or 0.5 for 2 pairs (a test split of at least one image and a training split too).

  Raises:
    UserInputError: a single pair with split='fraction'.
  """
  if fp.num_folder_test is None and fp.num_pairs < 2:
    raise UserInputError(f'{images_dir}: {fp.num_pairs} image/mask pair cannot be split into a '
                         'training and a test split; add images or use config.data.split=folders')
  return TEST_FRACTION if fp.num_folder_test is not None or fp.num_pairs > 2 else 0.5


def check_split(fp: Fingerprint, test_fraction, images_dir: str) -> None:
  """Raises UserInputError when test_fraction is not in (0, 1), or with split='fraction' leaves
  a split empty."""
  if (not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool)
      or not 0 < test_fraction < 1):
    raise UserInputError(f'config.data.test_fraction must be in (0, 1), got {test_fraction!r}')
  if fp.num_folder_test is None and 0 in split_sizes(fp, test_fraction):
    empty = 'test' if split_sizes(fp, test_fraction)[1] == 0 else 'train'
    raise UserInputError(f'{images_dir}: {fp.num_pairs} image(s) with config.data.test_fraction='
                         f'{test_fraction} leave the {empty} split empty; add images or change '
                         'config.data.test_fraction (unset, it is inferred)')


def infer_channels(fp: Fingerprint) -> int:
  """The images' channel count.

  Raises:
    UserInputError: the images have different counts (naming one file of each of two).
  """
  if len(fp.channels) > 1:
    (count, path), (other, other_path) = list(fp.channels.items())[:2]
    raise UserInputError(f'{other_path}: image has {other} channel(s) but {path} has {count}; '
                         'the images of a dataset must share one channel count')
  return next(iter(fp.channels))


def infer_normalize(fp: Fingerprint) -> str:
  """'unit' for 8-bit images ([0, 1] by 255), 'percentile' for 16-bit and float ones (their
  range says nothing about their values: the training split's 0.5 and 99.5 percentiles)."""
  return 'unit' if set(fp.dtypes) == {'uint8'} else 'percentile'


def infer_num_classes(fp: Fingerprint, mask_mode: str, ignore_label: int = -1) -> int:
  """2 with mask_mode='foreground', else the largest mask label other than `ignore_label` + 1
  (at least 2).

  Raises:
    UserInputError: a label of 256 or more (naming the mask).
  """
  if mask_mode == 'foreground':
    return 2
  largest = max([l for l in fp.labels if l != ignore_label], default=0)
  if largest >= MAX_CLASSES:
    raise UserInputError(f'{fp.max_label_file}: mask label {largest} is not a class id in '
                         f'[0, {MAX_CLASSES}); instance label images need '
                         'config.data.mask_mode=foreground')
  return max(2, largest + 1)


def infer_image_size(fp: Fingerprint, factor: int, resize: str) -> Tuple[int, int]:
  """The training window: per axis the median stored size (resize='resize', which scales every
  image to the window) or the smallest (resize='center_crop', which crops), capped at
  MAX_WINDOW and rounded down to a multiple of the model's downsampling `factor` (at least one
  `factor`: smaller images are scaled up).

  Raises:
    UserInputError: resize='center_crop' and an image smaller than `factor`.
  """
  base = fp.min_size if resize == 'center_crop' else fp.median_size
  if resize == 'center_crop' and min(base) < factor:
    raise UserInputError(f'config.data.resize=center_crop: the smallest image is '
                         f'{base[0]}x{base[1]}, smaller than the model\'s downsampling factor '
                         f'{factor}; use config.data.resize=resize')
  return tuple(max(factor, min(side, MAX_WINDOW) // factor * factor) for side in base)


def batch_cap(image_size: Sequence[int]) -> int:
  """At most MAX_BATCH images, and at most PIXELS_PER_BATCH pixels (at least one image)."""
  return max(1, min(MAX_BATCH, PIXELS_PER_BATCH // (int(image_size[0]) * int(image_size[1]))))


def infer_batch_size(num_labeled: int, share: int, multiple: int,
                     image_size: Sequence[int]) -> int:
  """`share` pool images plus the most labelled ones, a multiple of `multiple` (devices x the
  objective's pairs), within batch_cap and the training split.

  Raises:
    UserInputError: the training split holds fewer labelled images than `multiple`.
  """
  labeled = min(batch_cap(image_size), num_labeled) // multiple * multiple
  if not labeled and num_labeled < multiple:
    raise UserInputError(f'config.batch_size: the training split holds {num_labeled} labelled '
                         f'image(s), fewer than the {multiple} a batch needs (a multiple of the '
                         'devices); add images or lower config.data.test_fraction')
  return share + max(labeled, multiple)


def check_batch_size(batch_size, share: int, num_labeled: int, where: str) -> None:
  """Raises UserInputError when a batch holds more labelled images than the training split."""
  if isinstance(batch_size, int) and batch_size - share > num_labeled:
    raise UserInputError(f'config.batch_size={batch_size} takes {batch_size - share} labelled '
                         f'images per step but the training split holds {num_labeled} ({where}); '
                         f'set config.batch_size to at most {share + num_labeled}')


def infer_eval_batch_size(num_test: int, devices: int, image_size: Sequence[int]) -> int:
  """The whole test split in one batch where batch_cap allows, a multiple of `devices`."""
  needed = -(-max(1, num_test) // devices) * devices
  return max(devices, min(batch_cap(image_size), needed) // devices * devices)


def infer_data(data_config: Mapping, fp: Fingerprint, factor: int) -> Dict[str, object]:
  """{field: value} for the DATA_FIELDS that data_config leaves None.

  Raises:
    UserInputError: as the infer_* functions, in one line.
  """
  unset = [key for key in DATA_FIELDS if data_config.get(key) is None]
  values = {}
  if 'num_classes' in unset:
    values['num_classes'] = infer_num_classes(fp, data_config.get('mask_mode') or 'classes',
                                              data_config.get('ignore_label', -1))
  if 'channels' in unset:
    values['channels'] = infer_channels(fp)
  if 'normalize' in unset:
    values['normalize'] = infer_normalize(fp)
  if 'image_size' in unset:
    values['image_size'] = infer_image_size(fp, factor, data_config.get('resize') or 'resize')
  if 'test_fraction' in unset:
    values['test_fraction'] = infer_test_fraction(fp, data_config['images_dir'])
  return values


def needs_masks(data_config: Mapping) -> bool:
  """Whether inferring data_config's settings reads the masks (the class count, mode classes)."""
  return (data_config.get('num_classes') is None and
          (data_config.get('mask_mode') or 'classes') == 'classes')


def _describe(fp: Fingerprint) -> str:
  """'10 images 48x48 RGB uint8, labels 0 1' (sizes as min..max (median) when they vary)."""
  size = lambda s: f'{s[0]}x{s[1]}'
  sizes = (size(fp.median_size) if fp.min_size == fp.max_size else
           f'{size(fp.min_size)}..{size(fp.max_size)} (median {size(fp.median_size)})')
  count = (f'{fp.num_pairs}' if fp.num_folder_test is None
           else f'{fp.num_pairs}+{fp.num_folder_test} (train/+test/)')
  kinds = '/'.join(CHANNEL_NAMES.get(c, f'{c}-channel') for c in fp.channels)
  text = f'{count} images {sizes} {kinds} {"/".join(fp.dtypes)}'
  if fp.labels is not None:
    shown = fp.labels if len(fp.labels) <= 8 else fp.labels[:4] + ('...',) + fp.labels[-2:]
    text += ', mask labels ' + ' '.join(map(str, shown))
  return text


def summary(fp: Fingerprint, inferred: Mapping[str, object]) -> str:
  """The one line a run prints: the fingerprint and the settings inferred from it."""
  shown = lambda v: 'x'.join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
  if not inferred:
    return f'data: {_describe(fp)} (every setting given)'
  values = ', '.join(f'{key} {shown(value)}' for key, value in inferred.items())
  return (f'data: {_describe(fp)} -> {values} (inferred; override with '
          '--config.data.<key>=... or --config.<batch_size|eval_batch_size>=...)')


def downsampling_multiple(num_levels: int, unet_like: bool, patch_size: int = 1) -> int:
  """What the window's sides must divide by: 2 ** pools (a U-Net pools num_levels - 1 times,
  SegNet and the autoencoders num_levels times), and a masking objective's patch size."""
  factor = 2 ** (num_levels - 1 if unet_like else num_levels)
  return factor * patch_size // math.gcd(factor, patch_size)


def plan(data_config: Mapping, factor: int) -> Tuple[Fingerprint, Dict[str, object]]:
  """The fingerprint of config.data's folders and {field: value} for the DATA_FIELDS it leaves
  None (`factor`: what the window's sides must divide by), the split checked.

  Raises:
    UserInputError: a path unset, a bad file or folder, a value that cannot be inferred, or a
      test_fraction that leaves a split empty.
  """
  for key in ('images_dir', 'masks_dir'):
    if not data_config.get(key):
      raise UserInputError(f'config.data.{key} must be set for dataset segmentation_folder')
  fp = measure(data_config, needs_masks(data_config))
  values = infer_data(data_config, fp, factor)
  test_fraction = values.get('test_fraction', data_config.get('test_fraction'))
  check_split(fp, test_fraction, data_config['images_dir'])
  return fp, values
