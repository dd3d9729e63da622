"""Test-time augmentation of the logits and post-processing of label maps, for predict and
evaluate (inference.Segmenter applies them).

- Flips (nnU-Net's test-time mirroring, Isensee et al., Nature Methods 2021; MONAI's
  `TestTimeAugmentation`): the model runs on the image and on mirror images of it, each output
  is mirrored back and the logits are averaged. 'hflip' adds the left-right mirror image only,
  the flip the configs train with (data.augment.flip); 'flips' adds the left-right, up-down and
  both mirror images, as nnU-Net does for a model trained with mirroring along every axis
  (upright photos through 'flips' show the model upside-down scenes it never learned).
- Post-processing per foreground class (class 0 is the background): connected components of a
  class smaller than `min_component_size` pixels become background (nnU-Net's removal of small
  components), then holes of a class (regions it encloses, not connected to the image border)
  are filled with it (scipy.ndimage.binary_fill_holes; MONAI's `FillHoles`). Connectivity: 4
  neighbours (scipy.ndimage.label's default).
"""
from typing import Callable, Sequence, Tuple

import numpy as np
from scipy import ndimage

from segae_jax import batch
from segae_jax.errors import UserInputError

# Axes of [batch, height, width, dims] flipped by each pass of a test-time augmentation (the
# first pass: no flip).
_UP_DOWN, _LEFT_RIGHT = batch.spatial_axes(None)
PASSES = {'none': ((),), 'hflip': ((), (_LEFT_RIGHT,)),
          'flips': ((), (_LEFT_RIGHT,), (_UP_DOWN,), (_UP_DOWN, _LEFT_RIGHT))}
TTA = tuple(PASSES)
FLIPS = PASSES['flips']


def check_options(tta: str, min_component_size: int) -> None:
  """Raises UserInputError for an unknown tta or a negative min_component_size."""
  if tta not in TTA:
    raise UserInputError(f'--tta={tta!r}; expected one of {", ".join(TTA)}')
  if min_component_size < 0:
    raise UserInputError(f'--min_component_size={min_component_size}: expected a number of '
                         'pixels >= 0')


def with_flips(fn: Callable[[np.ndarray], np.ndarray],
               passes: Sequence[Tuple[int, ...]] = FLIPS) -> Callable[[np.ndarray], np.ndarray]:
  """fn: float32 [n, h, w, c] -> [n, h, w, dims] made the mean of fn over `passes` (the axes
  each flips; default all four mirror images) of its input, each output flipped back (same
  shapes and dtype)."""
  def averaged(images: np.ndarray) -> np.ndarray:
    total = None
    for axes in passes:
      out = np.asarray(fn(np.flip(images, axes) if axes else images), np.float32)
      out = np.flip(out, axes) if axes else out
      total = out if total is None else total + out
    return total / np.float32(len(passes))
  return averaged


def remove_small_components(labels: np.ndarray, min_size: int) -> np.ndarray:
  """labels int [h, w] with each foreground class's connected components of fewer than
  `min_size` pixels set to 0 (a copy; min_size 0 or 1 changes nothing)."""
  out = np.array(labels, copy=True)
  if min_size <= 1:
    return out
  for c in np.unique(labels):
    if c == 0:
      continue
    components, _ = ndimage.label(labels == c)
    sizes = np.bincount(components.reshape(-1))
    small = sizes < min_size
    small[0] = False  # Component 0 is everything else.
    out[small[components]] = 0
  return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
  """labels int [h, w] with every region a foreground class encloses (not reaching the image
  border through other pixels) given that class (a copy)."""
  out = np.array(labels, copy=True)
  for c in np.unique(labels):
    if c == 0:
      continue
    mask = labels == c
    out[ndimage.binary_fill_holes(mask) & ~mask] = c
  return out


def postprocess(labels: np.ndarray, min_component_size: int = 0,
                holes: bool = False) -> np.ndarray:
  """remove_small_components, then fill_holes if `holes`: int [h, w] -> same shape, dtype."""
  out = remove_small_components(labels, min_component_size)
  return fill_holes(out) if holes else out
