"""Reading the user's image files (predict, unsupervised, the input pipeline): listing a folder,
decoding with Pillow, converting to float arrays."""
import os
from typing import List, Optional, Sequence

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


def to_array(image: Image.Image, channels: int,
             size: Optional[Sequence[int]] = None) -> np.ndarray:
  """A Pillow 'L' or 'RGB' image as float32 [height, width, channels] in [0, 1] (pixel / 255),
  first resized (bilinear) to `size` = (height, width) if given, else at its own size."""
  if size is not None:
    image = image.resize((int(size[1]), int(size[0])), Image.BILINEAR)
  width, height = image.size
  return np.asarray(image, np.float32).reshape(height, width, channels) / 255.0


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
