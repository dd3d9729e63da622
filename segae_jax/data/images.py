"""Reading the user's image files (predict, unsupervised, the input pipeline, the folder
builders): listing a folder, decoding with Pillow, checking and converting to uint8 arrays."""
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from segae_jax.errors import UserInputError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')


def list_images(path: str) -> List[str]:
  """The image files to read: `path` itself, or the image files of the folder `path`.

  Raises:
    UserInputError: `path` does not exist, or the folder holds no image file.
  """
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise UserInputError(f'--input {path} does not exist')
  files = sorted(os.path.join(path, f) for f in os.listdir(path)
                 if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith('.'))
  if not files:
    raise UserInputError(f'--input folder {path} holds no image file ({", ".join(IMAGE_SUFFIXES)})')
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
      out.append({'image': image.reshape(image.shape[:2] + (self.channels,))})
    return out


# ---------------------------------------------------------------------------------------------
# Strict reading for the prepared folder datasets (segmentation_folder, image_folder): every file
# is checked before anything is written, and nothing is converted silently.

GRAY_MODES = ('1', 'L', 'LA')
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
  return array.reshape(array.shape[:2] + (channels,))


def capped_size(height: int, width: int, max_size: int) -> Tuple[int, int]:
  """(height, width) scaled so the long side is at most `max_size` pixels, aspect ratio kept
  (rounded, at least 1); unchanged when it already fits or max_size is 0 (no cap)."""
  long_side = max(height, width)
  if not max_size or long_side <= max_size:
    return height, width
  scale = max_size / long_side
  return max(1, round(height * scale)), max(1, round(width * scale))
