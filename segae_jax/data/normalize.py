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
import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from segae_jax.errors import UserInputError

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------
# An image to segment against the run that will segment it (predict, unsupervised --input, the
# Segmenter): what its normalisation can represent, what converts exactly, what is refused.

BITS = {'uint8': '8-bit', 'uint16': '16-bit', 'float32': 'float'}
CONVERT_TO = {'uint8': '8 bits', 'uint16': '16 bits', 'float32': 'float32'}
# ITU-R 601-2 luma in 16-bit fixed point, Pillow's convert('L') to the bit (libImaging/Convert.c).
LUMA = (19595, 38470, 7471)


def describe_run(normalization: Normalization, channels: int) -> str:
  """'3-channel 8-bit images (uint8, normalize=unit)': what a run trained on."""
  dtype = normalization.dtype
  return (f'{channels}-channel {BITS.get(dtype, dtype)} images ({dtype}, '
          f'normalize={normalization.mode})')


def _as_image(pixels, name: str, channels: int, run: str) -> np.ndarray:
  """pixels as [height, width, c] ([height, width] gains c = 1); else one line."""
  pixels = np.asarray(pixels)
  pixels = pixels[..., None] if pixels.ndim == 2 else pixels
  if pixels.ndim != 3 or not pixels.size:
    raise UserInputError(f'{name}: array of shape {pixels.shape}; expected [height, width] or '
                         f'[height, width, {channels}] (the run trained on {run})')
  return pixels


def conform(pixels: np.ndarray, name: str, channels: int, normalization: Normalization,
            alpha: Optional[bool] = None, from_file: bool = True) -> np.ndarray:
  """An image to segment -> [height, width, channels] in the dtype the run's images were stored
  in (float32 for arrays of values, below), converting only where the conversion is exact or a
  convention, with one warning (logging) naming the image and each conversion; else refused.

    input \\ run   uint8          uint16                       float32
    uint8         accepted       unit: x257, warned (v/255 is  refused
                                 257v/65535: the same input);
                                 zscore, percentile: refused
                                 (statistics in sensor counts,
                                 which 8-bit values do not share)
    uint16        refused        accepted                     refused
    float32 file  refused        refused                      accepted
    array of      float32 if in  float32 if in 0..65535        accepted
    floats or     0..255, all    (warned if all in [0, 1])
    signed ints   in [0, 1]:
    (Segmenter)   warned
    bool, other unsigned arrays: refused (a mask, or a bit depth no run stores)

  Then the channels (c the input's):
    c == channels                                   accepted
    an alpha channel (`alpha`; for an 8-bit array   dropped if fully opaque, warned;
    into a 1- or 3-channel 8-bit run, when alpha    transparent pixels: refused
    is None, one channel more than the run's)
    1 into an 8-bit 3-channel run                   replicated, warned
    3 into an 8-bit 1-channel run                   ITU-R 601-2 luma (Pillow's 'L'), warned
    any other                                       refused

  The explicit bit depths (uint8, uint16, a file's float32) are kept as they are: a file's float
  units and a 16-bit file's values above 255 have no defined place in another run's pixels. An
  array of floats or signed integers holds values "in the units the run trained on" (the export's
  documented float32 pixels in stored units), so it is accepted within the run's range; values
  all in [0, 1] into an integer run are likely fractions and warned about (not scaled). Channel
  conversions are made for 8-bit runs only: their 3 channels are RGB; a 16-bit or float run's
  3 channels need not be.

  Args:
    pixels: [height, width] or [height, width, c].
    name: names the image in messages (its path, or 'image 2').
    channels: the run's.
    normalization: the run's (its dtype and mode).
    alpha: whether the last channel is alpha (a file's); None guesses for arrays as above.
    from_file: a file's dtype is its kind; False: an array (floats and signed ints are values).

  Raises:
    UserInputError: one line naming the image and what the run expects.
  """
  run = describe_run(normalization, channels)
  pixels, notes = _as_image(pixels, name, channels, run), []
  if alpha or (alpha is None and _alpha_guess(pixels, channels, normalization)):
    pixels = _drop_alpha(pixels, name, run, notes)
  pixels = _conform_dtype(pixels, name, normalization, from_file, notes)
  pixels = _conform_channels(pixels, name, channels, normalization, notes)
  if notes:
    log.warning('%s: %s; the run trained on %s', name, ', '.join(notes), run)
  return pixels


def _alpha_guess(pixels: np.ndarray, channels: int, normalization: Normalization) -> bool:
  return (pixels.dtype == np.uint8 and normalization.dtype == 'uint8' and channels in (1, 3)
          and pixels.shape[2] == channels + 1)


def _drop_alpha(pixels: np.ndarray, name: str, run: str, notes: list) -> np.ndarray:
  if pixels[..., -1].min() < unit_scale(pixels.dtype):
    raise UserInputError(f'{name}: image has transparent pixels (alpha channel); expected an '
                         f'opaque image (an opaque alpha channel is dropped): the run trained on '
                         f'{run}')
  notes.append('dropped its opaque alpha channel')
  return pixels[..., :-1]


def _conform_dtype(pixels: np.ndarray, name: str, normalization: Normalization, from_file: bool,
                   notes: list) -> np.ndarray:
  dtype, target = str(pixels.dtype), normalization.dtype
  if dtype == target:
    return pixels
  if dtype == 'uint8' and target == 'uint16' and normalization.mode == 'unit':
    notes.append('scaled its 8-bit values to 16 bits (x257)')
    return pixels.astype(np.uint16) * np.uint16(257)
  if not from_file and pixels.dtype.kind in 'if':  # Values, not a bit depth.
    return _values(pixels.astype(np.float32), name, normalization, notes)
  trained = f'{BITS[target]} images ({target}, normalize={normalization.mode})'
  if dtype not in BITS:  # Arrays only: files are read as one of BITS.
    raise UserInputError(f'{name}: pixels of type {dtype}, but the run trained on {trained}; '
                         f'expected {target} pixels, or float values in their units')
  why = (f', whose {normalization.mode} statistics are in 16-bit values' if dtype == 'uint8'
         and target == 'uint16' else '')
  raise UserInputError(f'{name}: {BITS[dtype]} image ({dtype}), but the run trained on '
                       f'{trained}{why}; convert it to {CONVERT_TO[target]} or train on '
                       f'{BITS[dtype]} images')


def _values(pixels: np.ndarray, name: str, normalization: Normalization,
            notes: list) -> np.ndarray:
  """An array of values (floats, signed integers) as float32, in the integer run's range."""
  if not np.isfinite(pixels).all():
    raise UserInputError(f'{name}: NaN or infinite pixel values; expected finite numbers')
  if normalization.dtype == 'float32':
    return pixels
  top, low, high = unit_scale(normalization.dtype), float(pixels.min()), float(pixels.max())
  units = (f'{BITS[normalization.dtype]} units 0..{top:.0f} ({normalization.dtype}, '
           f'normalize={normalization.mode})')
  if low < 0 or high > top:
    raise UserInputError(f'{name}: values in [{low:g}, {high:g}], outside the run\'s {units}; '
                         'pass pixels in the units of its training images')
  if 0 < high <= 1:
    notes.append(f'took its values, all in [0, 1], as {BITS[normalization.dtype]} units '
                 f'0..{top:.0f} (multiply by {top:.0f} if they are fractions of full scale)')
  return pixels


def _conform_channels(pixels: np.ndarray, name: str, channels: int,
                      normalization: Normalization, notes: list) -> np.ndarray:
  found = pixels.shape[2]
  if found == channels:
    return pixels
  if pixels.dtype == np.uint8 and normalization.dtype == 'uint8':
    if (found, channels) == (1, 3):
      notes.append('replicated its one grayscale channel to 3 (RGB)')
      return np.repeat(pixels, 3, axis=2)
    if (found, channels) == (3, 1):
      notes.append("converted its colour to grayscale (ITU-R 601-2 luma, as Pillow's 'L')")
      luma = pixels.astype(np.uint32) @ np.array(LUMA, np.uint32) + 0x8000
      return (luma >> 16).astype(np.uint8)[..., None]
  raise UserInputError(f'{name}: image has {found} channel(s) ({pixels.dtype}), but the run '
                       f'trained on {describe_run(normalization, channels)}')
