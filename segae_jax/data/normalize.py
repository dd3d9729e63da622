"""Input normalisation, config.data.normalize: how stored pixels (uint8, uint16 or float32, any
number of channels) become the model's float32 input.

  'unit'        pixel / the dtype's largest value (255, 65535; float32 as stored): [0, 1].
  'zscore'      (pixel - mean_c) / std_c, with each channel's mean and standard deviation over
                the training split (nnU-Net's ZScoreNormalization, here with dataset-wide
                statistics as its CTNormalization uses).
  'percentile'  each channel clipped to its [0.5, 99.5] percentiles over the training split, then
                (pixel - mean_c) / std_c (nnU-Net's CTNormalization; Isensee et al., "nnU-Net",
                Nature Methods 18, 2021, and nnunetv2/preprocessing/normalization).

The statistics are computed once, when a folder dataset is prepared (Statistics, over the
training split's images as stored), kept in the dataset's metadata, and copied into each run's
checkpoints, so the input pipeline (numpy), predict, evaluate, tiling and an exported model (the
same Normalization inside the jitted function) normalise identically.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from segae_jax.errors import UserInputError

MODES = ('unit', 'zscore', 'percentile')
PERCENTILES = (0.5, 99.5)
DTYPES = ('uint8', 'uint16', 'float32')  # What folder datasets store.
SAMPLED_PIXELS = 1_000_000  # Per channel, over the whole split, for the percentiles.


def check_mode(mode: str) -> str:
  """Raises UserInputError unless `mode` is one of MODES."""
  if mode not in MODES:
    raise UserInputError(f'config.data.normalize={mode!r}; expected one of {", ".join(MODES)}')
  return mode


def unit_scale(dtype: Any) -> float:
  """The largest value of an integer pixel dtype (255 for uint8, 65535 for uint16); 1 for floats."""
  dtype = np.dtype(dtype)
  return float(np.iinfo(dtype).max) if dtype.kind in 'ui' else 1.0


class Statistics:
  """Per-channel statistics of a split's images, added one at a time: exact means and standard
  deviations (float64 sums), percentiles from up to SAMPLED_PIXELS pixels per channel drawn
  evenly over the images (seeded, so a dataset always gets the same statistics).

  Args:
    channels: of every image added.
    num_images: how many will be added (sets the per-image sample).
  """

  def __init__(self, channels: int, num_images: int, seed: int = 0):
    self.channels, self.count = channels, 0
    self.sums, self.squares = np.zeros(channels), np.zeros(channels)
    self.per_image = max(1, SAMPLED_PIXELS // max(1, num_images))
    self.samples, self.rng = [], np.random.default_rng(seed)

  def add(self, image: np.ndarray) -> None:
    """image [height, width, channels] of any numeric dtype."""
    pixels = np.asarray(image, np.float64).reshape(-1, self.channels)
    self.count += len(pixels)
    self.sums += pixels.sum(0)
    self.squares += np.square(pixels).sum(0)
    take = self.rng.choice(len(pixels), min(self.per_image, len(pixels)), replace=False)
    self.samples.append(pixels[take].astype(np.float32))

  def result(self) -> Dict[str, list]:
    """{'mean', 'std', 'low', 'high'}: one float per channel (low/high the PERCENTILES)."""
    mean = self.sums / max(1, self.count)
    std = np.sqrt(np.maximum(self.squares / max(1, self.count) - np.square(mean), 0.0))
    samples = np.concatenate(self.samples) if self.samples else np.zeros((1, self.channels))
    low, high = np.percentile(samples, PERCENTILES, axis=0)
    return {'mean': mean.tolist(), 'std': std.tolist(), 'low': low.tolist(),
            'high': high.tolist()}


@dataclasses.dataclass(frozen=True)
class Normalization:
  """Stored pixels -> the model's float32 input (see the module doc).

  Attributes:
    mode: one of MODES.
    dtype: the stored pixels' dtype name ('uint8', 'uint16', 'float32').
    mean, std, low, high: per channel, over the training split (empty for 'unit' without
      statistics).
  """
  mode: str = 'unit'
  dtype: str = 'uint8'
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()
  low: Tuple[float, ...] = ()
  high: Tuple[float, ...] = ()

  @classmethod
  def make(cls, mode: str, dtype: str, statistics: Optional[Mapping[str, Sequence[float]]],
           where: str = 'the dataset') -> 'Normalization':
    """The normalisation `mode` of pixels of `dtype` with a dataset's `statistics`.

    Raises:
      UserInputError: an unknown mode, or 'zscore' / 'percentile' without statistics (a dataset
        prepared before they were stored; `where` names it).
    """
    check_mode(mode)
    if mode != 'unit' and not statistics:
      raise UserInputError(f"config.data.normalize='{mode}' needs the training split's statistics, "
                           f'which {where} does not hold (prepared before they were stored): '
                           'delete its folder to prepare it again')
    # 'unit' uses none: a run records only what its normalisation reads.
    stats = {} if mode == 'unit' else {k: tuple(float(v) for v in statistics[k])
                                       for k in ('mean', 'std', 'low', 'high')}
    return cls(mode=mode, dtype=str(np.dtype(dtype)), **stats)

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, fields: Optional[Mapping[str, Any]]) -> 'Normalization':
    """The inverse of to_dict; None (a run from before normalisation was recorded) -> 8-bit
    'unit'."""
    if not fields:
      return cls()
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

  def __call__(self, pixels, xp=np):
    """float32 normalised pixels [..., channels] of `pixels` [..., channels]; xp is numpy (the
    input pipeline) or jax.numpy (inside a jitted model function)."""
    if self.mode == 'unit':
      scale = unit_scale(self.dtype)
      if xp is np:  # One pass, no float32 temporary (data.sources.unit_float's values).
        return np.divide(pixels, np.float32(scale), dtype=np.float32)
      return xp.asarray(pixels, xp.float32) / scale
    x = xp.asarray(pixels, xp.float32)
    if self.mode == 'percentile':
      x = xp.clip(x, xp.asarray(self.low, xp.float32), xp.asarray(self.high, xp.float32))
    std = xp.maximum(xp.asarray(self.std, xp.float32), 1e-8)
    return ((x - xp.asarray(self.mean, xp.float32)) / std).astype(xp.float32)
