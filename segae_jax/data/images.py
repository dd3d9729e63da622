"""Reading the user's image files (predict, unsupervised, the input pipeline, the folder
builders): listing a folder, decoding with Pillow (TIFF with tifffile: stacks, 16-bit, float),
checking and converting to arrays of one of the stored dtypes (uint8, uint16, float32)."""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from segae_jax.batch import spatial_shape
from segae_jax.errors import UserInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
TIFF_SUFFIXES = ('.tif', '.tiff')


def list_images(path: str) -> List[str]:
  """The image files to read: `path` itself, or the image files of the folder `path`.

  Raises:
    UserInputError: `path` does not exist, the folder holds no image file, or two files share a
      stem (a.png and a.tif).
  """
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise UserInputError(f'--input {path} does not exist')
  files = sorted(os.path.join(path, f) for f in os.listdir(path)
                 if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith('.'))
  if not files:
    raise UserInputError(f'--input folder {path} holds no image file ({", ".join(IMAGE_SUFFIXES)})')
  seen: Dict[str, str] = {}
  for f in files:  # Outputs are named by stem: a.png and a.tif would write one a_labels.png.
    stem = os.path.splitext(f)[0]
    if stem in seen:
      raise UserInputError(f'{f}: same file stem as {seen[stem]}; outputs are named by stem '
                           '(<stem>_labels.png), so each stem must appear once')
    seen[stem] = f
  return files


def read_image(path: str, channels: int) -> Image.Image:
  """Opens an image with Pillow as 'L' (channels=1) or 'RGB' (channels=3).

  Raises:
    UserInputError: the file is not an image Pillow can decode.
  """
  try:
    with Image.open(path) as img:
      img.load()
      return img.convert('L' if channels == 1 else 'RGB')
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise UserInputError(f'{path}: not a readable image ({e.__class__.__name__}: {e})') from None


class ImageFileSource:
  """Image files read and decoded on each access (random access for the input pipeline, which
  decodes in its worker processes): examples {'image': uint8 [height, width, channels]}.

  Args:
    paths: the files, in example order; a batch stacks them, so they must share one size.
    channels: 1 (grayscale) or 3 (RGB).
  """

  def __init__(self, paths: Sequence[str], channels: int):
    self.paths, self.channels = list(paths), channels

  def __len__(self) -> int:
    return len(self.paths)

  def describe(self, index: int) -> str:
    return f'example {index} ({self.paths[index]})'

  def __getitems__(self, indices: Sequence[int]) -> List[dict]:
    """Raises UserInputError naming a file Pillow cannot decode."""
    out = []
    for i in indices:
      image = np.asarray(read_image(self.paths[int(i)], self.channels))
      out.append({'image': image.reshape(spatial_shape(image, leading=0) + (self.channels,))})
    return out


# ---------------------------------------------------------------------------------------------
# Strict reading for the prepared folder datasets (segmentation_folder, image_folder): every file
# is checked before anything is written, and nothing is converted silently.

GRAY_MODES = ('1', 'L', 'LA')
# np.asarray gives one integer per pixel for these ('1' -> bool, I;16* -> uint16, I -> int32).
MASK_MODES = ('1', 'L', 'P', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N')
COLOUR_MODES = ('RGB', 'RGBA', 'P', 'PA', 'CMYK', 'YCbCr')
ALPHA_MODES = ('LA', 'RGBA', 'PA')


def one_line(error: BaseException) -> str:
  """'TypeName: message' of an exception on one line (for messages naming a file)."""
  return ' '.join(f'{type(error).__name__}: {error}'.split())


def list_image_files(directory: str, what: str, recursive: bool = False) -> Dict[str, str]:
  """{key: full path} of the image files in `directory`, sorted by key.

  The key is the file stem (flat), or with `recursive` the path below `directory` without its
  extension ('cats/cat_01'). Hidden files and folders (macOS '._x.png' resource forks) are skipped.

  Raises:
    UserInputError: the folder is missing, holds no image file, or two files share a key.
  """
  if not os.path.isdir(directory):
    raise UserInputError(f'{directory}: {what} folder does not exist')
  files: Dict[str, str] = {}
  for root, dirs, names in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if recursive else []
    for entry in sorted(names):
      stem, ext = os.path.splitext(entry)
      path = os.path.join(root, entry)
      if entry.startswith('.') or ext.lower() not in IMAGE_SUFFIXES or not os.path.isfile(path):
        continue
      key = os.path.relpath(os.path.join(root, stem), directory).replace(os.sep, '/')
      if key in files:
        raise UserInputError(f'{path}: same file stem as {files[key]}; files are matched by '
                             f'stem, so each stem must appear once')
      files[key] = path
  if not files:
    raise UserInputError(f'{directory}: no {what} files ({" ".join(IMAGE_SUFFIXES)}) in the '
                         f'folder{" or below it" if recursive else ""}')
  return dict(sorted(files.items()))


def open_image(path: str, what: str = 'image') -> Image.Image:
  """Opens and fully decodes one file (a truncated file fails here, not later).

  Raises:
    UserInputError: the file cannot be decoded, or holds several frames (a TIFF stack).
  """
  try:
    with Image.open(path) as image:
      image.load()
      frames = getattr(image, 'n_frames', 1)
  # Pillow's format plugins raise many exception types on malformed data (OSError, SyntaxError,
  # ValueError, struct.error, DecompressionBombError, ...); all mean "this file is unusable".
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(f'{path}: cannot read {what} ({one_line(e)})') from None
  if frames != 1:
    raise UserInputError(f'{path}: {what} file holds {frames} frames; expected one image per file')
  return image


def image_array(image: Image.Image, path: str, channels: int) -> np.ndarray:
  """A Pillow image -> uint8 [height, width, channels], refusing what cannot convert without loss:
  another channel count than `channels` (grayscale = 1: modes 1, L, LA; colour = 3), transparent
  pixels (a fully opaque alpha channel is dropped), 16-bit and float modes.

  Raises:
    UserInputError: naming the file and what was expected.
  """
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
  return array.reshape(spatial_shape(array, leading=0) + (channels,))


def capped_size(height: int, width: int, max_size: int) -> Tuple[int, int]:
  """(height, width) scaled so the long side is at most `max_size` pixels, aspect ratio kept
  (rounded, at least 1); unchanged when it already fits or max_size is 0 (no cap)."""
  long_side = max(height, width)
  if not max_size or long_side <= max_size:
    return height, width
  scale = max_size / long_side
  return max(1, round(height * scale)), max(1, round(width * scale))


# ---------------------------------------------------------------------------------------------
# Scientific images: any channel count, 8 and 16 bits, float (the folder builders and predict).

def is_tiff(path: str) -> bool:
  return path.lower().endswith(TIFF_SUFFIXES)


def _tiff_array(path: str, what: str, channels: int = 1) -> Optional[np.ndarray]:
  """A TIFF's pixels [height, width, channels] in the file's dtype via tifffile (channels last
  from samples, or from pages / a channel axis first; see tiff_layout for files whose axes
  tifffile does not know), or None for an 8-bit palette TIFF or an 8-bit one with an alpha
  sample when `channels` is not 4 (Pillow's conversion, with its checks on transparency, applies
  to those).

  Raises:
    UserInputError: unreadable, or not one 2-D image with or without channels.
  """
  import tifffile  # pylint: disable=import-outside-toplevel
  try:
    with tifffile.TiffFile(path) as tif:
      page, series = tif.pages[0], tif.series[0]
      alpha = any(e in (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
                  for e in page.extrasamples)  # Not UNSPECIFIED: channels, which Pillow drops.
      if page.dtype == np.uint8 and (page.photometric == tifffile.PHOTOMETRIC.PALETTE or
                                     (alpha and channels != 4)):
        return None
      array, axes = series.asarray(), series.axes
  except Exception as e:  # pylint: disable=broad-except (tifffile raises many types)
    raise UserInputError(f'{path}: cannot read {what} ({one_line(e)})') from None
  shape, axis = tiff_layout(array.shape, axes, path, what, channels)
  array = array.reshape(shape)
  if axis is None:
    return array[..., None]
  return array if axis == 2 else np.moveaxis(array, 0, -1)


def tiff_layout(shape: Sequence[int], axes: str, path: str, what: str = 'image',
                channels: Optional[int] = None) -> Tuple[Tuple[int, ...], Optional[int]]:
  """Where a TIFF series (tifffile's shape and axes) holds its channels: (its shape without the
  size-1 axes other than Y and X, the channel axis of that shape: None for [height, width], 2
  for channels last, 0 for one page per channel). The one rule for reading the pixels and, in
  data.fingerprint, the header.

  `tifffile.imwrite(path, image)` of image [h, w, c] with c not 3 or 4 records the axes QYX
  (unknown: h pages of w x c) and the shape [h, w, c] in the file's metadata, which is also the
  shape of the array read; so does a [c, h, w] stack. With unknown axes the channel count
  decides: given `channels`, a last axis of that size (and a first one of another size) is read
  as channels last, with one warning naming the reading, a first axis of that size as one page
  per channel (stacks, as ImageJ and tifffile.imwrite of [c, h, w] write them), and both or
  neither is refused (the file does not say which axis holds the channels); with `channels`
  None (the count is to be inferred), the shorter end axis.

  Raises:
    UserInputError: not one 2-D image with or without channels, or unknown axes that `channels`
      does not settle.
  """
  keep = [i for i, n in enumerate(shape) if n != 1 or axes[i] in 'YX']
  shape, axes = tuple(int(shape[i]) for i in keep), ''.join(axes[i] for i in keep)
  dims = 'x'.join(map(str, shape))
  if len(shape) == 3 and axes == 'QYX':
    if channels is None:
      return shape, 2 if shape[2] < shape[0] else 0
    first, last = shape[0] == channels, shape[2] == channels
    if first == last:
      reading = ('both its first axis (pages) and its last are' if first else
                 'neither its first axis (pages) nor its last is')
      raise UserInputError(
          f'{path}: {what} of shape {dims} with unknown axes (QYX): {reading} the {channels} '
          'channel(s) expected; write it with explicit axes, e.g. tifffile.imwrite(path, image, '
          "photometric='minisblack', planarconfig='contig') for [height, width, channels]")
    if last:
      log.warning('%s: axes QYX unknown; read shape %s as height x width x %d channels', path,
                  dims, channels)
      return shape, 2
  if len(shape) == 2:
    return shape, None
  if len(shape) == 3 and axes[:2] == 'YX':
    return shape, 2
  if len(shape) == 3 and axes[1:] == 'YX':  # Pages (or a channel axis) first.
    return shape, 0
  frames = f'{shape[0]} frames of ' if len(shape) > 3 else ''
  raise UserInputError(f'{path}: {what} holds {frames}{dims} pixels (axes {axes}); expected one '
                       'image: [height, width], its channels last, or one page per channel')


def _as_stored_dtype(array: np.ndarray, path: str, what: str) -> np.ndarray:
  """uint8 and uint16 kept, bool -> uint8, other numbers -> float32 (values kept); NaN or
  infinite values refused."""
  if array.dtype == np.bool_:
    return array.astype(np.uint8)
  if array.dtype in (np.uint8, np.uint16):
    return array
  if array.dtype.kind not in 'uif':
    raise UserInputError(f'{path}: {what} has pixels of type {array.dtype}; expected numbers')
  array = array.astype(np.float32)
  if not np.isfinite(array).all():
    raise UserInputError(f'{path}: {what} has NaN or infinite pixel values; expected finite '
                         'numbers')
  return array


def read_pixels(path: str, channels: int, what: str = 'image') -> np.ndarray:
  """One image file -> [height, width, channels] uint8, uint16 or float32, refusing what cannot
  be read without loss or guessing: 8-bit files as image_array reads them (Pillow: grayscale,
  colour, palette, opaque alpha); TIFFs through tifffile (multi-page stacks and channel axes as
  channels, 16-bit, float); 16-bit and float PNGs; another channel count than `channels`; NaN.

  Raises:
    UserInputError: naming the file and what was expected.
  """
  array = _tiff_array(path, what, channels) if is_tiff(path) else None
  if array is None:
    image = open_image(path, what)
    if image.mode in GRAY_MODES + COLOUR_MODES:
      return image_array(image, path, channels)
    array = np.asarray(image)
    array = array.reshape(spatial_shape(array, leading=0) + (-1,))
  array = _as_stored_dtype(array, path, what)
  if array.shape[2] != channels:
    raise UserInputError(f'{path}: {what} has {array.shape[2]} channel(s) ({array.dtype}) but '
                         f'config.data.channels is {channels}')
  return array


def read_label_image(path: str, what: str = 'mask') -> np.ndarray:
  """A single-channel label image -> int64 [height, width]: PNG/BMP through Pillow (modes 1, L,
  P by index, I, I;16), TIFF through tifffile (8 to 32-bit integers, e.g. instance label images
  of microscopy tools).

  Raises:
    UserInputError: unreadable, several channels or frames, or non-integer values.
  """
  if is_tiff(path):
    array = _tiff_array(path, what)
    if array is not None:
      if array.shape[2] != 1 or array.dtype.kind not in 'uib':
        raise UserInputError(f'{path}: {what} is {array.dtype} with {array.shape[2]} channel(s); '
                             'expected a single-channel label image of integer class ids')
      return array[..., 0].astype(np.int64)
  image = open_image(path, what)
  if image.mode not in MASK_MODES:
    raise UserInputError(f'{path}: {what} has mode {image.mode} ({len(image.getbands())} '
                         'channels); expected a single-channel label image (mode L, P or I) of '
                         'class ids')
  return np.asarray(image).astype(np.int64)


def read_as_written(path: str, channels: int, what: str = 'image') -> Tuple[np.ndarray, bool]:
  """One image file as written, for checking against a trained run (normalize.conform): pixels
  [height, width, c] uint8, uint16 or float32 and whether the last channel is an alpha channel.
  8-bit files through Pillow as grayscale (c 1, or 2 with alpha) or colour (3, or 4 with alpha;
  palette, CMYK, YCbCr as RGB); TIFFs through tifffile as read_pixels reads them (`channels`
  decides an 8-bit alpha sample and unknown axes); 16-bit and float PNGs as stored; other
  integers as float32. Channels are not checked here.

  Raises:
    UserInputError: unreadable, several frames, not numbers, NaN or infinite values.
  """
  array = _tiff_array(path, what, channels) if is_tiff(path) else None
  if array is not None:
    return _as_stored_dtype(array, path, what), False
  image = open_image(path, what)
  mode = 'PA' if image.mode == 'P' and 'transparency' in image.info else image.mode
  alpha = mode in ALPHA_MODES
  if mode in GRAY_MODES + COLOUR_MODES:
    target = ('L' if mode in GRAY_MODES else 'RGB') + ('A' if alpha else '')
    array = np.asarray(image.convert(target))
  else:
    array = _as_stored_dtype(np.asarray(image), path, what)
  return array.reshape(spatial_shape(array, leading=0) + (-1,)), alpha
