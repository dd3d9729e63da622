"""Sliding-window (tiled) inference at an image's own resolution, as MONAI's
`sliding_window_inference` does it (Cardoso et al., "MONAI: An open-source framework for deep
learning in healthcare", 2022; monai.inferers): tiles of the model's input size cover the image
with a fractional `overlap`, the model runs on them in batches, and the outputs are blended into
one map, each tile's output weighted by an importance map (a Gaussian centred on the tile with
sigma = 0.125 x the tile size, MONAI's default sigma_scale, or constant) and divided by the sum of
the weights. Gaussian blending gives the tile centres, where the model saw the most context, the
most say, so the seams between tiles vanish.

An image smaller than a tile on an axis is padded with zeros on both sides (MONAI's constant
padding: half before, the rest after) and the output cropped back. The Gaussian's floor differs
from MONAI's on purpose (see `importance_map`). Pure numpy around a jitted model function.
"""
import dataclasses
from typing import Callable, List, Sequence, Tuple

import numpy as np

from segae_jax import batch
from segae_jax.errors import UserInputError

MODES = ('auto', 'tile', 'resize')
BLENDS = ('gaussian', 'constant')
SIGMA_SCALE = 0.125  # MONAI's sliding_window_inference default.


def check_options(mode: str, overlap: float, blend: str) -> None:
  """Raises UserInputError for an unknown --mode or --blend, or --overlap outside [0, 1)."""
  if mode not in MODES:
    raise UserInputError(f'--mode={mode!r}: expected one of {", ".join(MODES)}')
  if blend not in BLENDS:
    raise UserInputError(f'--blend={blend!r}: expected one of {", ".join(BLENDS)}')
  if not 0.0 <= overlap < 1.0:
    raise UserInputError(f'--overlap={overlap}: expected a fraction in [0, 1) of the tile size')


def is_tiled(mode: str, input_size: Sequence[int], height: int, width: int) -> bool:
  """Whether a height x width image is tiled under --mode: 'tile', or 'auto' and larger than the
  model's input_size (height, width) on an axis; 'resize' never."""
  return mode == 'tile' or (mode == 'auto' and (height > input_size[0] or width > input_size[1]))


def parse_tile_size(text: str, default: Sequence[int]) -> Tuple[int, int]:
  """'HxW' (or 'S' for a square) -> (H, W); '' -> `default` (the model's input size).

  Raises:
    UserInputError: not one or two positive integers.
  """
  if not text:
    return int(default[0]), int(default[1])
  parts = text.lower().split('x')
  try:
    size = tuple(int(p) for p in parts)
  except ValueError:
    size = ()
  if len(size) == 1:
    size = size * 2
  if len(size) != 2 or min(size) < 1:
    raise UserInputError(f'--tile_size={text!r}: expected HxW (e.g. 64x64) or one size, in pixels')
  return size


def starts(length: int, tile: int, overlap: float) -> List[int]:
  """Tile start offsets along one axis: every int(tile * (1 - overlap)) pixels (at least 1), the
  last one moved back to end at the border (MONAI's dense patch slices); [0] if length <= tile."""
  if length <= tile:
    return [0]
  stride = max(1, int(tile * (1.0 - overlap)))
  count = -(-(length - tile) // stride) + 1
  return [min(i * stride, length - tile) for i in range(count)]


def importance_map(tile: Tuple[int, int], blend: str) -> np.ndarray:
  """float32 [tile_h, tile_w] weights: a separable Gaussian centred on the tile (sigma =
  SIGMA_SCALE x the tile size per axis, scaled to a peak of 1), floored at the smallest positive
  float32 so that no pixel's weight sum is zero; or ones.

  MONAI's `compute_importance_map` floors the Gaussian at 1e-3 instead. Where four tiles meet,
  every one of them is at its corner, so that floor weighs them equally and the seam comes back
  (benchmarks/tiling_seams.py measures both; docs/tools.md). With constant weights, or where
  no weight falls below 1e-3, the blend equals MONAI's.
  """
  if blend == 'constant':
    return np.ones(tile, np.float32)
  axes = []
  for n in tile:
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    axes.append(np.exp(-0.5 * (x / (SIGMA_SCALE * n)) ** 2))
  weights = np.outer(axes[0], axes[1])
  weights /= weights.max()
  return np.maximum(weights, np.finfo(np.float32).tiny).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Tiled application of a model function to one image (see the module doc).

  Attributes:
    tile: (height, width) of a tile, in pixels.
    overlap: fraction in [0, 1) of the tile by which neighbouring tiles overlap.
    blend: 'gaussian' or 'constant'.
    batch_size: tiles per call of the model function (the last call padded, so it compiles once).
  """
  tile: Tuple[int, int]
  overlap: float = 0.25
  blend: str = 'gaussian'
  batch_size: int = 32

  def windows(self, height: int, width: int) -> List[Tuple[int, int]]:
    """(top, left) of every tile of a height x width image (after padding to the tile size)."""
    th, tw = self.tile
    return [(top, left) for top in starts(max(height, th), th, self.overlap)
            for left in starts(max(width, tw), tw, self.overlap)]

  def _batched(self, fn, tiles: np.ndarray) -> np.ndarray:
    """fn over tiles in batches of a power of two up to batch_size (zero tiles pad the last):
    images of many sizes then compile the model a few times, not once per tile count."""
    size = min(self.batch_size, 1 << (len(tiles) - 1).bit_length())
    pad = -len(tiles) % size
    tiles = np.concatenate([tiles, np.zeros((pad,) + tiles.shape[1:], tiles.dtype)])
    return np.concatenate([np.asarray(fn(tiles[i:i + size]))
                           for i in range(0, len(tiles), size)])[:len(tiles) - pad]

  def apply(self, fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> np.ndarray:
    """fn's output over the whole image, blended from its tiles.

    Args:
      fn: float32 tiles [n, tile_h, tile_w, channels] -> [n, tile_h, tile_w, dims] (logits or
        feature maps at the tile's resolution).
      image: float32 [height, width, channels], any size.

    Returns:
      float32 [height, width, dims]: sum over tiles of weight x output / sum of weights.
    """
    height, width = batch.spatial_shape(image, 0)
    th, tw = self.tile
    # Smaller than a tile: padded with zeros on both sides, the odd pixel after (MONAI's).
    before = (max(0, th - height) // 2, max(0, tw - width) // 2)
    padded = np.pad(image, ((before[0], max(0, th - height) - before[0]),
                            (before[1], max(0, tw - width) - before[1]), (0, 0)))
    windows = self.windows(height, width)
    tiles = np.stack([padded[t:t + th, l:l + tw] for t, l in windows])
    outputs = self._batched(fn, tiles)
    weights = importance_map(self.tile, self.blend)
    total = np.zeros(batch.spatial_shape(padded, 0) + outputs.shape[-1:], np.float32)
    norm = np.zeros(batch.spatial_shape(padded, 0) + (1,), np.float32)
    for (t, l), out in zip(windows, outputs):
      total[t:t + th, l:l + tw] += weights[..., None] * out
      norm[t:t + th, l:l + tw] += weights[..., None]
    return (total / norm)[before[0]:before[0] + height, before[1]:before[1] + width]
