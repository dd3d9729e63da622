"""From images at their own size to the training size: deterministic fits for evaluation, random
crops for training. The image and its mask always move together.

Examples are uint8 'image' [batch, height, width, channels] and optionally 'segmentation'
[batch, height, width] (or [..., 1]): stacked arrays when the examples share one size, or 1-D
object arrays of per-example arrays when they do not (data.pipeline.stack_examples). Each
function returns stacked arrays of `size`.

Two modes, as config.data.resize says:
  - 'resize': evaluation resizes the whole image to `size` (aspect ratio not kept); training takes
    a random resized crop (a window covering a fraction in [min_scale, 1] of the image's area, of
    the image's own aspect ratio) and resizes it to `size`.
  - 'center_crop' (crop only, no resampling): evaluation takes the central `size` window,
    training a window of `size` at a random position. An image smaller than `size` is an error.

Resampling is OpenCV's: images bilinear (area averaging when shrinking on both axes, which does not
alias), masks nearest neighbour with pixel centres aligned (labels are categories: nearest never
invents a class between two others).
"""
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from segae_jax import batch as batch_lib
from segae_jax.errors import UserInputError

RESIZE_MODES = ('resize', 'center_crop')
Size = Tuple[int, int]


def _opencv():
  """cv2, imported on first use (its import takes about 0.1 s), with one thread per process: the
  pipeline's parallelism is grain's workers, the other cores XLA's."""
  import cv2  # pylint: disable=import-outside-toplevel
  cv2.setNumThreads(1)
  return cv2


def check_mode(mode: str) -> str:
  """Raises UserInputError unless `mode` is one of RESIZE_MODES."""
  if mode not in RESIZE_MODES:
    raise UserInputError(f'unknown config.data.resize {mode!r}; known: {", ".join(RESIZE_MODES)}')
  return mode


def check_fits(height: int, width: int, size: Size, where: str) -> None:
  """Raises UserInputError when a crop-only window of `size` does not fit a height x width image
  (`where` names the image or the split)."""
  if height < size[0] or width < size[1]:
    raise UserInputError(f'{where}: image is {height}x{width} (height x width), smaller than '
                         f'config.data.image_size {size[0]}x{size[1]} needed by '
                         f'resize="center_crop"; use resize="resize" or a smaller image_size')


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
  """uint8 [h, w, c] -> [size[0], size[1], c], bilinear (area averaging when shrinking)."""
  cv2 = _opencv()
  h, w, c = image.shape
  if (h, w) == tuple(size):
    return image
  shrink = h >= size[0] and w >= size[1]
  out = cv2.resize(np.ascontiguousarray(image), (size[1], size[0]),
                   interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
  return out.reshape(size[0], size[1], c)


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
  """uint8 label map [h, w] -> [size[0], size[1]], nearest neighbour with pixel centres aligned."""
  if batch_lib.spatial_shape(mask, leading=0) == tuple(size):
    return mask
  cv2 = _opencv()
  return cv2.resize(np.ascontiguousarray(mask), (size[1], size[0]),
                    interpolation=cv2.INTER_NEAREST_EXACT)


def _window(image: np.ndarray, mask: Optional[np.ndarray], top: int, left: int, height: int,
            width: int, size: Size):
  rows, cols = slice(top, top + height), slice(left, left + width)
  out_mask = None if mask is None else resize_mask(mask[rows, cols], size)
  return resize_image(image[rows, cols], size), out_mask


def _fit_one(image, mask, size: Size, mode: str, rng=None, min_scale: float = 1.0):
  """One example -> (image [size, c], mask [size] or None); random when `rng` is given."""
  h, w = batch_lib.spatial_shape(image, leading=0)
  mask = None if mask is None else mask.reshape(batch_lib.spatial_shape(mask, leading=0))
  if mode == 'center_crop':
    check_fits(h, w, size, 'an example')
    if rng is None:
      top, left = (h - size[0]) // 2, (w - size[1]) // 2
    else:
      top, left = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
    return _window(image, mask, top, left, size[0], size[1], size)
  if rng is None:
    return _window(image, mask, 0, 0, h, w, size)
  # The draws of the crop augmentation before native sizes: the same crops at the same seed.
  scale = rng.uniform(min_scale, 1.0)
  ch, cw = max(1, round(h * np.sqrt(scale))), max(1, round(w * np.sqrt(scale)))
  top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
  return _window(image, mask, top, left, ch, cw, size)


def is_fitted(examples: Mapping[str, np.ndarray], size: Size) -> bool:
  """True when 'image' (and 'segmentation') are already stacked arrays of `size`."""
  arrays = [examples[k] for k in ('image', 'segmentation') if k in examples]
  return all(a.dtype != object and a.ndim >= 1 + batch_lib.SPATIAL_RANK
             and batch_lib.spatial_shape(a) == tuple(size) for a in arrays)


def fit(examples: Mapping[str, np.ndarray], size: Size, mode: str,
        rngs: Optional[Sequence[np.random.Generator]] = None,
        min_scale: float = 1.0) -> Mapping[str, np.ndarray]:
  """Examples of any size -> stacked uint8 'image' [batch, size[0], size[1], c] (and
  'segmentation' [batch, size[0], size[1]]); other features are passed on unchanged.

  Without `rngs` the deterministic fit of `mode` (whole image resized, or the centre window);
  with one generator per example, the random crop of `mode` (see the module doc). Stacked examples
  already of `size` are returned as they are by the deterministic fit.

  Raises:
    UserInputError: mode 'center_crop' and an image smaller than `size`.
  """
  if rngs is None and is_fitted(examples, size):
    return examples
  images, masks = examples['image'], examples.get('segmentation')
  pairs = [_fit_one(images[i], None if masks is None else masks[i], size, mode,
                    None if rngs is None else rngs[i], min_scale) for i in range(len(images))]
  out = dict(examples, image=np.stack([image for image, _ in pairs]))
  if masks is not None:
    out['segmentation'] = np.stack([mask for _, mask in pairs])
  return out
