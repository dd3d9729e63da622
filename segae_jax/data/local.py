"""What the two builders of the user's own folders share (segmentation_folder, image_folder):
a seeded split by fraction, the stored features, shards written as they are read, the image
sizes recorded in the dataset's metadata, and a prepare() that leaves nothing half-built.

Images are stored at their own size (capped at config.data.max_size on the long side),
losslessly: 8-bit grayscale and colour as PNG (tfds encodes with Pillow and decodes with OpenCV),
every other image (16-bit, float, any channel count) as a zlib-compressed array of its dtype
(decoded with zlib and numpy): no TensorFlow either way. One prepared dataset serves every
training size, cropped or resized in the input pipeline (data.sizing), and every normalisation
(data.normalize: the training split's statistics are stored in its metadata).
"""
import dataclasses
import hashlib
import json
import numbers
import os
import shutil
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segae_jax.batch import spatial_shape
from segae_jax.data import normalize, sizing
from segae_jax.data.images import capped_size, read_pixels
from segae_jax.errors import UserInputError

SPLITS = ('train', 'test')
SPLIT_MODES = ('fraction', 'folders')
# Bytes of decoded pixels per array_record shard. Each shard is written as its examples are read
# (tfds.core.ShardBasedBuilder), so preparing holds about one shard in memory at most;
# GeneratorBasedBuilder would hold a whole split, and past 1 GB spill it through TensorFlow.
SHARD_BYTES = 256 << 20


def is_int(value) -> bool:
  """An integer that is not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _abspath(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


def check_image_size(size) -> Tuple[int, int]:
  """config.data.image_size as (height, width) of positive ints.

  Raises:
    UserInputError: anything else.
  """
  if (not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2
      or not all(is_int(s) and s > 0 for s in size)):
    raise UserInputError(f'config.data.image_size must be (height, width), two positive '
                         f'integers, got {size!r}')
  return int(size[0]), int(size[1])


def check_common(config) -> None:
  """The fields both folder configs share (FolderConfig, image_folder.ImageFolderConfig):
  image_size, channels, resize, split, test_fraction, split_seed, max_size, normalize;
  normalised in place.

  Raises:
    UserInputError: naming config.data.<field>.
  """
  config.image_size = check_image_size(config.image_size)
  if not is_int(config.channels) or config.channels < 1:
    raise UserInputError(f'config.data.channels must be a positive integer (1 grayscale, 3 '
                         f'colour, or any count of a TIFF stack), got {config.channels!r}')
  sizing.check_mode(config.resize)
  if config.split not in SPLIT_MODES:
    raise UserInputError(f'unknown config.data.split {config.split!r}; known: '
                         f'{", ".join(SPLIT_MODES)}')
  if (not isinstance(config.test_fraction, numbers.Real) or isinstance(config.test_fraction, bool)
      or not 0.0 < config.test_fraction < 1.0):
    raise UserInputError(f'config.data.test_fraction must be in (0, 1), got '
                         f'{config.test_fraction!r}')
  for key in ('split_seed', 'max_size'):
    if not is_int(getattr(config, key)) or getattr(config, key) < 0:
      raise UserInputError(f'config.data.{key} must be a non-negative integer, got '
                           f'{getattr(config, key)!r}')
  normalize.check_mode(config.normalize)
  config.channels, config.test_fraction = int(config.channels), float(config.test_fraction)
  config.split_seed, config.max_size = int(config.split_seed), int(config.max_size)


def check_paths(config, keys: Sequence[str], optional: Sequence[str] = ()) -> None:
  """Makes the path fields `keys` (required) and `optional` absolute, in place.

  Raises:
    UserInputError: a field that is not a path, or a required one left empty.
  """
  for key in tuple(keys) + tuple(optional):
    value = getattr(config, key)
    if not isinstance(value, (str, os.PathLike)):
      raise UserInputError(f'config.data.{key} must be a path, got {value!r}')
    if not os.fspath(value):
      if key in keys:
        raise UserInputError(f'config.data.{key} must be set (a folder of images)')
      continue
    setattr(config, key, _abspath(os.fspath(value)))


def config_name(prefix: str, settings: Mapping[str, object]) -> str:
  """'<prefix>_<12 hex digits of the settings' hash>'."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
  return f'{prefix}_{digest[:12]}'


def config_from_mapping(data_config: Mapping, cls, fields: Sequence[str],
                        required: Sequence[str]):
  """The builder config `cls` from config.data: `fields` taken from it, the class's defaults for
  those missing (or None).

  Raises:
    UserInputError: a `required` field is missing or empty, or a field is bad.
  """
  for key in required:
    if data_config.get(key) in (None, ''):
      raise UserInputError(f'config.data.{key} must be set for dataset {data_config.get("name")}')
  defaults = {f.name: f.default for f in dataclasses.fields(cls)
              if f.default is not dataclasses.MISSING}
  args = {key: data_config.get(key) for key in fields}
  return cls(**{k: defaults.get(k) if v is None else v for k, v in args.items()})


def split_by_fraction(items: List[Any], test_fraction: float, seed: int,
                      where: str) -> Dict[str, List[Any]]:
  """{'train': [...], 'test': [...]}: round(test_fraction * N) items, picked by a permutation
  seeded with `seed`, go to test; both keep the order of `items`.

  Raises:
    UserInputError: a split would be empty (`where` names the folder).
  """
  num_test = int(len(items) * test_fraction + 0.5)  # Round half up, not to even.
  if num_test == 0 or num_test == len(items):
    empty = 'test' if num_test == 0 else 'train'
    raise UserInputError(f'{where}: {len(items)} image(s) with test_fraction {test_fraction} '
                         f'leave the {empty} split empty; add images or change '
                         f'config.data.test_fraction')
  is_test = np.zeros(len(items), bool)
  is_test[np.random.default_rng(seed).permutation(len(items))[:num_test]] = True
  return {'train': [x for x, t in zip(items, is_test) if not t],
          'test': [x for x, t in zip(items, is_test) if t]}


def is_png_storable(channels: int, dtype: str = 'uint8') -> bool:
  """Whether images are stored as PNG (8-bit grayscale or colour: the datasets prepared before
  other images were read keep their format); other images as zlib-compressed arrays."""
  return np.dtype(dtype) == np.uint8 and channels in (1, 3)


def image_feature(channels: int, dtype: str = 'uint8') -> tfds.features.FeatureConnector:
  """The stored image of any height and width (None, None, channels): a PNG (is_png_storable),
  else a zlib-compressed array of `dtype` (uint16, float32 or uint8 of other channel counts),
  which keeps every bit and any channel count."""
  if is_png_storable(channels, dtype):
    return tfds.features.Image(shape=(None, None, channels), encoding_format='png')
  return tfds.features.Tensor(shape=(None, None, channels), dtype=np.dtype(dtype),
                              encoding=tfds.features.Encoding.ZLIB)


def png(array: np.ndarray) -> Image.Image:
  """uint8 [h, w] or [h, w, 1 | 3] -> the Pillow image tfds encodes (a numpy array would make
  tfds encode it with TensorFlow)."""
  return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def encode_image(array: np.ndarray):
  """What image_feature(channels, dtype) of the array's channels and dtype stores."""
  return png(array) if is_png_storable(array.shape[-1], array.dtype) else array


class StoredDtype:
  """For the folder builders: the dtype their images are stored in is the first image file's
  (check_and_measure holds every other file to it); 'uint8' when it cannot be read (the checks
  then report that file). Subclasses give first_image(): its path, or None."""

  def first_image(self) -> Optional[str]:
    raise NotImplementedError

  def stored_dtype(self) -> str:
    if getattr(self, '_stored_dtype', None) is None:
      self._stored_dtype = 'uint8'
      try:
        path = self.first_image()
        if path:
          self._stored_dtype = str(read_pixels(path, self.builder_config.channels).dtype)
      except UserInputError:
        pass
    return self._stored_dtype


def check_and_measure(splits: Mapping[str, Sequence[Any]], read: Callable[[Any], Any],
                      dtype: str, channels: int, max_size: int):
  """Reads and checks every file before anything is written (a bad file found halfway through
  writing would cost the whole build).

  Args:
    splits: {split: items}; read(item) -> (image [h, w, channels] at the file's own size, its
      path), raising UserInputError for a bad file.

  Returns:
    ({split: stored (height, width) of each image}, the training split's normalisation
    statistics with their 'dtype': data.normalize.Statistics).

  Raises:
    UserInputError: a bad file, or an image of another dtype than `dtype`.
  """
  sizes: Dict[str, List[Tuple[int, int]]] = {}
  statistics = normalize.Statistics(channels, len(splits['train']))
  for name, items in splits.items():
    sizes[name] = []
    for item in items:
      image, path = read(item)
      if str(image.dtype) != dtype:
        raise UserInputError(f'{path}: image is {image.dtype} but the dataset\'s first image is '
                             f'{dtype}; expected one bit depth (uint8, uint16 or float32) for '
                             'all')
      if name == 'train':
        statistics.add(image)
      sizes[name].append(capped_size(*spatial_shape(image, leading=0), max_size))
  return sizes, {'dtype': dtype, **statistics.result()}


def normalization_of(builder: tfds.core.DatasetBuilder, mode: str, where: str):
  """The data.normalize.Normalization `mode` of a prepared folder dataset, from the statistics
  in its metadata (a dataset prepared before they were stored holds 8-bit images and none).

  Raises:
    UserInputError: 'zscore' or 'percentile' on a dataset without statistics.
  """
  statistics = builder.info.metadata.get('normalization')
  return normalize.Normalization.make(mode, (statistics or {}).get('dtype', 'uint8'), statistics,
                                      f'{where} {builder.data_path}')


def capped(image: np.ndarray, mask, max_size: int):
  """(image, mask) scaled so the long side is at most `max_size` (0: unchanged), aspect kept;
  image with area averaging, mask nearest neighbour (mask may be None)."""
  size = capped_size(*spatial_shape(image, leading=0), max_size)
  if size == spatial_shape(image, leading=0):
    return image, mask
  return sizing.resize_image(image, size), (None if mask is None else
                                            sizing.resize_mask(mask, size))


@dataclasses.dataclass(frozen=True)
class ShardExamples:
  """The (key, example) pairs of one shard: read(item) for items[i], keys start, start + 1, ..."""
  read: Callable[[Any], Dict[str, Any]]
  items: Tuple[Any, ...]
  start: int

  def __call__(self):
    for i, item in enumerate(self.items, self.start):
      yield i, self.read(item)


def shards(splits: Mapping[str, Sequence[Any]], read: Callable[[Any], Dict[str, Any]],
           bytes_per_example: int) -> Dict[str, List[ShardExamples]]:
  """{split: [ShardExamples]} of about SHARD_BYTES of decoded pixels each."""
  per_shard = max(1, SHARD_BYTES // max(1, bytes_per_example))
  return {name: [ShardExamples(read, tuple(items[s:s + per_shard]), s)
                 for s in range(0, len(items), per_shard)]
          for name, items in splits.items()}


def size_summary(sizes: Sequence[Tuple[int, int]]) -> Dict[str, int]:
  """{'count', 'min_height', 'min_width', 'max_height', 'max_width', 'pixels'} of (h, w) sizes."""
  heights, widths = np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])
  return {'count': len(sizes), 'min_height': int(heights.min()), 'min_width': int(widths.min()),
          'max_height': int(heights.max()), 'max_width': int(widths.max()),
          'pixels': int((heights * widths).sum())}


def check_stored_fits(config, height: int, width: int, path: str) -> None:
  """With config.resize='center_crop', raises UserInputError (naming `path`) unless a
  height x width image, once stored (capped at config.max_size), holds the image_size window."""
  if config.resize == 'center_crop':
    sizing.check_fits(*capped_size(height, width, config.max_size), config.image_size, path)


def plan_shards(info: tfds.core.DatasetInfo, splits: Mapping[str, Sequence[Any]],
                sizes: Mapping[str, Sequence[Tuple[int, int]]],
                read: Callable[[Any], Dict[str, Any]],
                bytes_per_pixel: int) -> Dict[str, List[ShardExamples]]:
  """Records each split's size_summary of its stored (height, width) sizes in
  info.metadata['sizes'] and returns the splits' shards of about SHARD_BYTES (from the largest
  mean pixel count of a split times `bytes_per_pixel`)."""
  info.metadata['sizes'] = {name: size_summary(s) for name, s in sizes.items()}
  pixels = max(s['pixels'] / s['count'] for s in info.metadata['sizes'].values())
  return shards(splits, read, int(pixels) * bytes_per_pixel)


def checked_sources(builder: tfds.core.DatasetBuilder, config, where: str):
  """(the prepared dataset's data sources by split, its recorded sizes by split), after checking
  that with config.resize='center_crop' every split's smallest image holds config.image_size.

  Raises:
    UserInputError: a split too small for the crop, naming `where`, the split and its size.
  """
  sizes = dict(builder.info.metadata['sizes'])
  if config.resize == 'center_crop':
    for split, s in sizes.items():
      sizing.check_fits(s['min_height'], s['min_width'], config.image_size,
                        f'{where} {builder.data_path} split {split!r} (smallest image)')
  return builder.as_data_source(), sizes


def _incomplete(config_dir: str) -> set:
  """The incomplete.* build folders in `config_dir` now."""
  if not os.path.isdir(config_dir):
    return set()
  return {entry for entry in os.listdir(config_dir) if entry.startswith('incomplete.')}


def _remove_leftovers(config_dir: str, before: set) -> None:
  """Removes the incomplete.* build folders in `config_dir` that were not there `before` (this
  attempt's: another process building into a shared tfds_dir keeps its own), then the folders
  left empty."""
  for entry in _incomplete(config_dir) - before:
    shutil.rmtree(os.path.join(config_dir, entry), ignore_errors=True)
  for directory in (config_dir, os.path.dirname(config_dir)):
    try:
      os.rmdir(directory)  # Only succeeds when empty: a prepared dataset is never touched.
    except OSError:
      break


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Builds the dataset once (a prepared config is reused without looking at the files again) and
  returns `builder`. On any failure, an interrupt while writing included, no dataset folder and no
  incomplete.* folder of this attempt is left.

  Raises:
    UserInputError: from the builder's checks, naming the offending file or key.
  """
  config_dir = os.fspath(builder.data_path.parent)  # <tfds_dir>/<builder name>/<config name>
  before = _incomplete(config_dir)
  try:
    builder.download_and_prepare()
  except BaseException:
    # tfds removes its own incomplete folder on most exceptions; this also clears it on the
    # others (an interrupt while writing) and the empty parents tfds created. A folder a killed
    # earlier attempt left is not this one's to remove (tfds never reads it).
    _remove_leftovers(config_dir, before)
    raise
  return builder
