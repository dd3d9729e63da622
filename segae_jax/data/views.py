"""Training views: what an objective (segae_jax.training.objectives) asks the input pipeline to add
to the examples of a batch part, on top of the preprocessed (weak) view in 'image'.

Each view is a small picklable object `(batch, rngs) -> batch` adding one key; example i draws
only from rngs[i], its own generator (data.plans.ExampleRngs), after the weak view's draws, so a
view is the same for any worker count, resume or process count, and follows the weak view's
geometry (it is computed from the weak view, or is a map of the same size):

  'strong' (StrongView): float32 [n, h, w, c] in [0, 1], a photometric transform of 'image':
      brightness, contrast and gamma (together, with probability jitter_prob), a Gaussian blur
      (blur_prob), and Gaussian noise for grayscale images (noise_prob), as the strong view of
      FixMatch (Sohn et al., NeurIPS 2020, Sec. 2.3) and UniMatch (Yang et al., CVPR 2023) for
      segmentation: colour jitter p 0.8, blur sigma in [0.1, 2] p 0.5.
  'cutmix' (CutMixBox): float32 [n, h, w], 1 inside the box where the example takes its
      partner's pixels (CutMix, Yun et al., ICCV 2019; for segmentation French et al., BMVC 2020),
      all 0 where it is not mixed (probability 1 - prob). The box covers a fraction in
      [min_area, max_area] of the image with height / width in [min_aspect, 1 / min_aspect].
  'mask' (PatchMask): float32 [n, h, w], 1 on the hidden patches: exactly round(ratio * P) of the
      P patches of patch_size x patch_size (MAE, He et al., CVPR 2022; SimMIM, Xie et al.,
      CVPR 2022).
  'noise' (GaussianNoise): float32 [n, h, w, c], standard normal (the epsilon of denoising).

Raises (at construction): UserInputError naming the config key and the value expected.
"""
import dataclasses
from typing import Callable, Mapping, Sequence, Tuple

import numpy as np

from segae_jax.errors import UserInputError

Rngs = Sequence[np.random.Generator]


def check_range(key: str, value, low: float, high: float, low_open: bool = False,
                 high_open: bool = False) -> float:
  """float(value) if it lies in the interval (bounds open or closed as told), else one line."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok:
    value = float(value)
    ok = (value > low if low_open else value >= low) and (value < high if high_open
                                                         else value <= high)
  if not ok:
    interval = f'{"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
    raise UserInputError(f'{key}={value!r}: expected a number in {interval}')
  return value


@dataclasses.dataclass(frozen=True)
class StrongView:
  """The strong photometric view (module doc); fields as config.data.strong_augment has them.

  brightness, contrast: factors drawn from [1 - x, 1 + x]; gamma: exponent from [1 - x, 1 + x];
  blur_sigma: (min, max) sigma in pixels; noise_std: the noise's sigma is drawn from
  [0, noise_std] (pixel values in [0, 1]).
  """
  brightness: float = 0.5
  contrast: float = 0.5
  gamma: float = 0.3
  jitter_prob: float = 0.8
  blur_prob: float = 0.5
  blur_sigma: Tuple[float, float] = (0.1, 2.0)
  noise_prob: float = 0.5
  noise_std: float = 0.1
  key = 'strong'

  def __post_init__(self):
    where = 'config.data.strong_augment'
    for name in ('brightness', 'contrast', 'gamma'):
      check_range(f'{where}.{name}', getattr(self, name), 0.0, 1.0, high_open=True)
    for name in ('jitter_prob', 'blur_prob', 'noise_prob'):
      check_range(f'{where}.{name}', getattr(self, name), 0.0, 1.0)
    check_range(f'{where}.noise_std', self.noise_std, 0.0, 1.0)
    sigma = tuple(self.blur_sigma)
    if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
      raise UserInputError(f'{where}.blur_sigma={self.blur_sigma!r}: expected (min, max) with '
                           '0 < min <= max (pixels)')

  @classmethod
  def from_config(cls, fields: Mapping) -> 'StrongView':
    """From config.data.strong_augment ({} or missing fields: the defaults).

    Raises:
      UserInputError: an unknown field or a value out of range.
    """
    fields = dict(fields or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise UserInputError(f'config.data.strong_augment has no field(s) {", ".join(unknown)}; '
                           f'known: {", ".join(sorted(known))}')
    if 'blur_sigma' in fields:
      fields['blur_sigma'] = tuple(fields['blur_sigma'])
    return cls(**fields)

  def _one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A fixed number of draws, whatever is applied, then the noise array (the last draw).
    jitter, blur, noisy = (rng.random() < p for p in (self.jitter_prob, self.blur_prob,
                                                        self.noise_prob))
    b, c, g = (rng.uniform(1 - x, 1 + x) for x in (self.brightness, self.contrast, self.gamma))
    sigma, std = rng.uniform(*self.blur_sigma), rng.uniform(0.0, self.noise_std)
    x = image
    if jitter:
      x = np.clip(x * b, 0.0, 1.0)
      mean = x.mean()
      x = np.clip((x - mean) * c + mean, 0.0, 1.0) ** g
    if blur:
      from scipy import ndimage  # pylint: disable=import-outside-toplevel
      x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode='reflect')
    if noisy and image.shape[-1] == 1 and std > 0:  # Grayscale: no colour to jitter instead.
      x = np.clip(x + std * rng.standard_normal(x.shape, dtype=np.float32), 0.0, 1.0)
    return x.astype(np.float32)

  def __call__(self, batch, rngs: Rngs):
    images = batch['image']
    return dict(batch, strong=np.stack([self._one(images[i], rngs[i])
                                        for i in range(len(images))]))


@dataclasses.dataclass(frozen=True)
class CutMixBox:
  """The CutMix box of each example (module doc); fields from config.objective_params
  (cutmix_prob, cutmix_min_area, cutmix_max_area, cutmix_min_aspect)."""
  prob: float = 0.5
  min_area: float = 0.02
  max_area: float = 0.4
  min_aspect: float = 0.3
  key = 'cutmix'

  def __post_init__(self):
    where = 'config.objective_params'
    check_range(f'{where}.cutmix_prob', self.prob, 0.0, 1.0)
    check_range(f'{where}.cutmix_min_area', self.min_area, 0.0, 1.0, low_open=True)
    check_range(f'{where}.cutmix_max_area', self.max_area, self.min_area, 1.0)
    check_range(f'{where}.cutmix_min_aspect', self.min_aspect, 0.0, 1.0, low_open=True)

  def box(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [height, width]: the box of one example (five draws from `rng`)."""
    mix = rng.random() < self.prob
    area = rng.uniform(self.min_area, self.max_area) * height * width
    aspect = np.exp(rng.uniform(np.log(self.min_aspect), -np.log(self.min_aspect)))
    box_h = int(min(height, max(1, round(np.sqrt(area * aspect)))))
    box_w = int(min(width, max(1, round(np.sqrt(area / aspect)))))
    top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    out = np.zeros((height, width), np.float32)
    if mix:
      out[top:top + box_h, left:left + box_w] = 1.0
    return out

  def __call__(self, batch, rngs: Rngs):
    h, w = batch['image'].shape[1:3]
    return dict(batch, cutmix=np.stack([self.box(h, w, rngs[i])
                                        for i in range(len(batch['image']))]))


@dataclasses.dataclass(frozen=True)
class PatchMask:
  """The hidden patches of each example (module doc); fields from config.objective_params
  (mask_ratio, patch_size). `image_size` (height, width) must be divisible by patch_size."""
  ratio: float
  patch_size: int
  image_size: Tuple[int, int]
  key = 'mask'

  def __post_init__(self):
    check_range('config.objective_params.mask_ratio', self.ratio, 0.0, 1.0, low_open=True,
                 high_open=True)
    p = self.patch_size
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
      raise UserInputError(f'config.objective_params.patch_size={p!r}: expected a positive '
                           'integer (pixels)')
    h, w = self.image_size
    if h % p or w % p:
      raise UserInputError(f'config.objective_params.patch_size={p} does not divide the '
                           f'{h}x{w} training images (config.data.image_size); use a divisor '
                           'of both sides')

  def mask(self, rng: np.random.Generator) -> np.ndarray:
    """float32 [height, width] of one example: 1 on its hidden patches (one permutation)."""
    grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
    patches = grid[0] * grid[1]
    hidden = np.zeros(patches, np.float32)
    hidden[rng.permutation(patches)[:int(round(self.ratio * patches))]] = 1.0
    return np.repeat(np.repeat(hidden.reshape(grid), self.patch_size, 0), self.patch_size, 1)

  def __call__(self, batch, rngs: Rngs):
    return dict(batch, mask=np.stack([self.mask(rngs[i]) for i in range(len(batch['image']))]))


@dataclasses.dataclass(frozen=True)
class GaussianNoise:
  """Standard normal noise shaped like each example's image (module doc)."""
  key = 'noise'

  def __call__(self, batch, rngs: Rngs):
    images = batch['image']
    return dict(batch, noise=np.stack([rngs[i].standard_normal(images.shape[1:], np.float32)
                                       for i in range(len(images))]))


View = Callable[[Mapping[str, np.ndarray], Rngs], Mapping[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class WithViews:
  """preprocess, then each view in order (a class, so grain can pickle it to its workers)."""
  preprocess: Callable
  views: Tuple[View, ...]

  def __call__(self, examples, rngs: Rngs):
    batch = self.preprocess(examples, rngs)
    for view in self.views:
      batch = view(batch, rngs)
    return batch


def with_views(preprocess: Callable, views: Sequence[View]) -> Callable:
  """preprocess with `views` added (preprocess itself when there are none)."""
  return WithViews(preprocess, tuple(views)) if views else preprocess
