"""Training views: what an objective (segae_jax.training.objectives) asks the input pipeline to add
to the examples of a batch part, on top of the preprocessed (weak) view in 'image'.

Each view is a small picklable object `(batch, rngs) -> batch` that reads its `inkey` (default
'image', the weak view) and writes its `outkey` (default its kind's key below), as big_vision's
InKeyOutKey preprocessing ops do, so several views of one kind coexist: StrongView(outkey=
'strong_1') and StrongView(outkey='strong_2') (segae_jax.batch.numbered). Example i draws only
from rngs[i], its own generator (data.plans.ExampleRngs), after the weak view's draws and those
of the views listed before it, so a view is the same for any worker count, resume or process
count, and follows the weak view's geometry (it is computed from the weak view, or is a map of
the same size). Out keys follow the batch contract (segae_jax.batch): an out key it declares
with another kind is refused, and the first training batch is checked against every view's
`outkey` and `kind` (data.inputs). The built-in views (VIEWS, by name: make()):

  StrongView ('strong', out key 'strong'): float32 [n, h, w, c] in [0, 1], a photometric
      transform of 'image': brightness, contrast and gamma (together, with probability
      jitter_prob), a Gaussian blur (blur_prob), and Gaussian noise for grayscale images
      (noise_prob), as the strong view of FixMatch (Sohn et al., NeurIPS 2020, Sec. 2.3) and
      UniMatch (Yang et al., CVPR 2023) for segmentation: colour jitter p 0.8, blur sigma in
      [0.1, 2] p 0.5 (on 321 to 513 px crops). Its defaults are those photo recipes; three
      settings keep a uniform empty background where it is (issue 36): contrast_center='zero'
      (contrast as a factor, 0 stays 0), noise_mode='signal' (noise proportional to the pixel:
      an empty pixel stays exactly 0) and blur_reference_size (blur_sigma given for an image of
      that size, scaled to the actual one).
  AffineGrid ('affine_grid', out key 'grid'): float32 [n, h, w, 2], a geometric strong view as
      its sampling grid: for each pixel of the strong view the (row, col) it is taken from in
      'image' (fractional; outside [0, h - 1] x [0, w - 1] where the view shows what lies
      outside the image). A random scale, rotation and translation about the centre with
      probability prob, else the identity (each pixel its own coordinates). The view writes
      only the grid: the step warps the strong image, the pseudo-labels and the confidences
      with it (training.objectives.geometry), so all three move together.
  CutMixBox ('cutmix_box', out key 'cutmix'): float32 [n, h, w], 1 inside the box where the
      example takes its partner's pixels (CutMix, Yun et al., ICCV 2019; for segmentation
      French et al., BMVC 2020), all 0 where it is not mixed (probability 1 - prob). The box
      covers a fraction in [min_area, max_area] of the image with height / width in
      [min_aspect, 1 / min_aspect].
  PatchMask ('patch_mask', out key 'mask'): float32 [n, h, w], 1 on the hidden patches: exactly
      round(ratio * P) of the P patches of patch_size x patch_size (MAE, He et al., CVPR 2022;
      SimMIM, Xie et al., CVPR 2022).
  GaussianNoise ('gaussian_noise', out key 'noise'): float32 [n, h, w, c], standard normal (the
      epsilon of denoising).

A view of a user's own (segae_jax.register_view) is any picklable callable of that signature;
with `outkey` and `kind` attributes (a subclass of InKeyOutKey has them) its key is checked too.

Raises (at construction): UserInputError naming the config key and the value expected, or an
out key of another kind.
"""
import dataclasses
from typing import Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from segae_jax import batch as batch_lib
from segae_jax.errors import UserInputError
from segae_jax.registry import Registry

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


VIEWS: Registry = Registry('view')

# StrongView's choices: how its noise scales, and about what its contrast scales.
NOISE_MODES = ('additive', 'signal')
CONTRAST_CENTERS = ('mean', 'zero')


def check_fields(cls: type, fields: Mapping, where: str) -> None:
  """Raises UserInputError for a field `fields` names that the dataclass `cls` lacks."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise UserInputError(f'{where} has no field(s) {", ".join(unknown)}; known: '
                         f'{", ".join(sorted(known))}')


@dataclasses.dataclass(frozen=True, kw_only=True)
class InKeyOutKey:
  """The base of the built-in views: it reads batch[inkey] and writes batch[outkey], an array of
  the batch contract's `kind` (segae_jax.batch.KINDS). A subclass sets `kind` and gives `outkey`
  its default (the contract's key of that kind, e.g. 'strong').

  Raises:
    UserInputError: an out key that is not a name, a batch part's name, or a key the batch
      contract declares with another kind (e.g. StrongView(outkey='mask')).
  """
  inkey: str = 'image'
  outkey: str
  kind: ClassVar[str] = 'image'
  # The config section a configured view's fields come from (its one-line errors name it).
  config_key: ClassVar[str] = 'config'

  @classmethod
  def from_config(cls, fields: Mapping) -> 'InKeyOutKey':
    """The view with the fields of its config section, cls.config_key ({} or missing fields:
    the defaults).

    Raises:
      UserInputError: an unknown field or a value out of range.
    """
    fields = dict(fields or {})
    check_fields(cls, fields, cls.config_key)
    return cls(**fields)

  def __post_init__(self):
    view = f'{type(self).__name__}(outkey={self.outkey!r})'
    if not isinstance(self.outkey, str) or not self.outkey or self.outkey in batch_lib.PARTS:
      raise UserInputError(f'{view}: expected a key name other than the batch parts '
                           f'{", ".join(batch_lib.PARTS)}')
    declared = batch_lib.kind_of(self.outkey)
    if declared is not None and declared != self.kind:
      raise UserInputError(f'{view}: the batch contract (segae_jax.batch) declares '
                           f'{self.outkey!r} of kind {declared}, but this view writes kind '
                           f'{self.kind}; give it another out key')

  def stacked(self, batch, rngs: Rngs, one: Callable) -> Dict:
    """batch with outkey = np.stack([one(i, rngs[i]) for each example i of batch[inkey]]): each
    example's draws from its own generator, examples in order."""
    n = len(batch[self.inkey])
    return dict(batch, **{self.outkey: np.stack([one(i, rngs[i]) for i in range(n)])})


@VIEWS.register('strong')
@dataclasses.dataclass(frozen=True)
class StrongView(InKeyOutKey):
  """The strong photometric view (module doc); fields as config.data.strong_augment has them,
  and the view's inkey and outkey (default 'strong').

  brightness, contrast: factors drawn from [1 - x, 1 + x]; gamma: exponent from [1 - x, 1 + x];
  blur_sigma: (min, max) sigma in pixels of an image of blur_reference_size pixels (0: of the
  actual image), so on an h x w image sigma is scaled by min(h, w) / blur_reference_size
  (UniMatch's (0.1, 2.0) at 512 is (0.0125, 0.25) px at 64); noise_std: the noise's sigma is
  drawn from [0, noise_std] (pixel values in [0, 1]), added as is (noise_mode 'additive') or
  times each pixel's value ('signal': signal-dependent noise, 0 stays 0); contrast_center:
  contrast scales about the image's mean ('mean') or about 0 ('zero', x * c).

  Every setting draws the same numbers from the example's generator (the draws do not depend
  on the modes), so the views after it (the CutMix box) are the same whatever the modes.
  """
  brightness: float = 0.5
  contrast: float = 0.5
  gamma: float = 0.3
  jitter_prob: float = 0.8
  blur_prob: float = 0.5
  blur_sigma: Tuple[float, float] = (0.1, 2.0)
  noise_prob: float = 0.5
  noise_std: float = 0.1
  noise_mode: str = 'additive'
  blur_reference_size: int = 0
  contrast_center: str = 'mean'
  outkey: str = dataclasses.field(default='strong', kw_only=True)
  kind: ClassVar[str] = 'image'
  config_key: ClassVar[str] = 'config.data.strong_augment'

  def __post_init__(self):
    super().__post_init__()
    where = self.config_key
    for name in ('brightness', 'contrast', 'gamma'):
      check_range(f'{where}.{name}', getattr(self, name), 0.0, 1.0, high_open=True)
    for name in ('jitter_prob', 'blur_prob', 'noise_prob'):
      check_range(f'{where}.{name}', getattr(self, name), 0.0, 1.0)
    check_range(f'{where}.noise_std', self.noise_std, 0.0, 1.0)
    sigma = tuple(self.blur_sigma)
    if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
      raise UserInputError(f'{where}.blur_sigma={self.blur_sigma!r}: expected (min, max) with '
                           '0 < min <= max (pixels)')
    for name, known in (('noise_mode', NOISE_MODES), ('contrast_center', CONTRAST_CENTERS)):
      if getattr(self, name) not in known:
        raise UserInputError(f'{where}.{name}={getattr(self, name)!r}: expected one of '
                             f'{", ".join(map(repr, known))}')
    size = self.blur_reference_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
      raise UserInputError(f'{where}.blur_reference_size={size!r}: expected an integer >= 0 '
                           '(pixels; 0: blur_sigma in pixels of the actual image)')

  @classmethod
  def from_config(cls, fields: Mapping) -> 'StrongView':
    """InKeyOutKey.from_config, blur_sigma made a tuple (a config may hold a list)."""
    fields = dict(fields or {})
    if 'blur_sigma' in fields:
      fields['blur_sigma'] = tuple(fields['blur_sigma'])
    return super().from_config(fields)

  def _one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # A fixed number of draws, whatever is applied, then the noise array (the last draw).
    jitter, blur, noisy = (rng.random() < p for p in (self.jitter_prob, self.blur_prob,
                                                        self.noise_prob))
    b, c, g = (rng.uniform(1 - x, 1 + x) for x in (self.brightness, self.contrast, self.gamma))
    sigma, std = rng.uniform(*self.blur_sigma), rng.uniform(0.0, self.noise_std)
    x = image
    if jitter:
      x = np.clip(x * b, 0.0, 1.0)
      center = x.mean() if self.contrast_center == 'mean' else 0.0
      x = np.clip((x - center) * c + center, 0.0, 1.0) ** g
    if blur:
      from scipy import ndimage  # pylint: disable=import-outside-toplevel
      sigma = sigma * self.blur_scale(batch_lib.spatial_shape(image, leading=0))
      x = ndimage.gaussian_filter(x, sigma=(sigma,) * batch_lib.SPATIAL_RANK + (0,),
                                  mode='reflect')
    if noisy and image.shape[-1] == 1 and std > 0:  # Grayscale: no colour to jitter instead.
      noise = std * rng.standard_normal(x.shape, dtype=np.float32)
      x = np.clip(x + (noise * x if self.noise_mode == 'signal' else noise), 0.0, 1.0)
    return x.astype(np.float32)

  def blur_scale(self, size: Sequence[int]) -> float:
    """The factor blur_sigma is multiplied by on an image of spatial `size` (h, w):
    min(size) / blur_reference_size, or 1 when blur_reference_size is 0."""
    return min(size) / self.blur_reference_size if self.blur_reference_size else 1.0

  def __call__(self, batch, rngs: Rngs):
    images = batch[self.inkey]
    return self.stacked(batch, rngs, lambda i, rng: self._one(images[i], rng))


@VIEWS.register('affine_grid')
@dataclasses.dataclass(frozen=True)
class AffineGrid(InKeyOutKey):
  """The geometric strong view of each example of batch[inkey], as its sampling grid (module
  doc); fields as config.data.strong_geometry has them, and the view's inkey and outkey
  (default 'grid'). Not measured yet: the defaults are moderate, not a recipe's.

  With probability prob the strong view is the weak one scaled by a factor from
  [1 - scale, 1 + scale] (> 1 enlarges), rotated by an angle from [-rotation, rotation]
  degrees (> 0 counter-clockwise as displayed, rows downwards) about the image centre, and
  shifted by up to translation * (h, w) pixels; else it is the weak view. Five draws per
  example whatever is applied. For an output pixel p and the centre m = ((h - 1) / 2,
  (w - 1) / 2): source = m + R(-angle) (p - m - shift) / factor, in (row, col).
  """
  prob: float = 0.5
  scale: float = 0.2
  rotation: float = 15.0
  translation: float = 0.1
  outkey: str = dataclasses.field(default='grid', kw_only=True)
  kind: ClassVar[str] = 'coords'
  config_key: ClassVar[str] = 'config.data.strong_geometry'

  def __post_init__(self):
    super().__post_init__()
    where = self.config_key
    check_range(f'{where}.prob', self.prob, 0.0, 1.0)
    check_range(f'{where}.scale', self.scale, 0.0, 1.0, high_open=True)
    check_range(f'{where}.rotation', self.rotation, 0.0, 180.0)
    check_range(f'{where}.translation', self.translation, 0.0, 1.0, high_open=True)

  def grid(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [height, width, 2]: the (row, col) source of each pixel of one example."""
    applied = rng.random() < self.prob
    factor = rng.uniform(1 - self.scale, 1 + self.scale)
    angle = np.deg2rad(rng.uniform(-self.rotation, self.rotation))
    shift = np.array([rng.uniform(-self.translation, self.translation) * height,
                      rng.uniform(-self.translation, self.translation) * width])
    pixels = np.stack(np.indices((height, width)), axis=-1).astype(np.float64)
    if not applied:
      return pixels.astype(np.float32)
    center = np.array([height - 1, width - 1]) / 2.0
    cos, sin = np.cos(angle), np.sin(angle)
    # The inverse of the forward rotation [[cos, -sin], [sin, cos]] on (row, col) vectors.
    inverse = np.array([[cos, sin], [-sin, cos]]) / factor
    return (center + (pixels - center - shift) @ inverse.T).astype(np.float32)

  def __call__(self, batch, rngs: Rngs):
    h, w = batch_lib.spatial_shape(batch[self.inkey])
    return self.stacked(batch, rngs, lambda i, rng: self.grid(h, w, rng))


@VIEWS.register('cutmix_box')
@dataclasses.dataclass(frozen=True)
class CutMixBox(InKeyOutKey):
  """The CutMix box of each example (module doc), the size of batch[inkey]; fields from
  config.objective_params (cutmix_prob, cutmix_min_area, cutmix_max_area, cutmix_min_aspect),
  and the view's inkey and outkey (default 'cutmix')."""
  prob: float = 0.5
  min_area: float = 0.02
  max_area: float = 0.4
  min_aspect: float = 0.3
  outkey: str = dataclasses.field(default='cutmix', kw_only=True)
  kind: ClassVar[str] = 'pixel_map'

  def __post_init__(self):
    super().__post_init__()
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
    h, w = batch_lib.spatial_shape(batch[self.inkey])
    return self.stacked(batch, rngs, lambda i, rng: self.box(h, w, rng))


@VIEWS.register('patch_mask')
@dataclasses.dataclass(frozen=True)
class PatchMask(InKeyOutKey):
  """The hidden patches of each example of batch[inkey] (module doc); fields from
  config.objective_params (mask_ratio, patch_size), and the view's inkey and outkey (default
  'mask'). `image_size` (height, width) must be divisible by patch_size."""
  ratio: float
  patch_size: int
  image_size: Tuple[int, int]
  outkey: str = dataclasses.field(default='mask', kw_only=True)
  kind: ClassVar[str] = 'pixel_map'

  def __post_init__(self):
    super().__post_init__()
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
    return self.stacked(batch, rngs, lambda i, rng: self.mask(rng))


@VIEWS.register('gaussian_noise')
@dataclasses.dataclass(frozen=True)
class GaussianNoise(InKeyOutKey):
  """Standard normal noise shaped like each example of batch[inkey] (module doc); outkey
  default 'noise'."""
  outkey: str = dataclasses.field(default='noise', kw_only=True)
  kind: ClassVar[str] = 'image'

  def __call__(self, batch, rngs: Rngs):
    shape = batch[self.inkey].shape[1:]  # One example's.
    return self.stacked(batch, rngs, lambda i, rng: rng.standard_normal(shape, np.float32))


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
  """preprocess with `views` added (preprocess itself when there are none).

  Raises:
    UserInputError: two views write the same out key (promised_keys).
  """
  promised_keys(views)
  return WithViews(preprocess, tuple(views)) if views else preprocess


def promised_keys(views: Sequence[View]) -> Dict[str, Optional[str]]:
  """{out key: kind} of the views that declare theirs (`outkey` and `kind` attributes; kind
  None where a view gives no kind): what the batch part holds after them (batch.check).

  Raises:
    UserInputError: two views write the same out key (the second would replace the first).
  """
  keys = {}
  for view in views:
    key = getattr(view, 'outkey', None)
    if key is None:
      continue
    if key in keys:
      raise UserInputError(f'two views write the batch key {key!r}; give each its own outkey '
                           f'(e.g. {", ".join(map(repr, batch_lib.numbered(key, 2)))})')
    keys[key] = getattr(view, 'kind', None)
  return keys


def make(name: str, **fields) -> View:
  """The view registered as `name` (VIEWS: 'strong', 'affine_grid', 'cutmix_box',
  'patch_mask', 'gaussian_noise', and the user's own) built with `fields`, e.g.
  make('strong', outkey='strong_2', blur_prob=0.0).

  Raises:
    UserInputError: an unknown name, a field the view lacks or a required one it was not given,
      or a value out of range.
  """
  cls = VIEWS.get(name)
  if dataclasses.is_dataclass(cls):
    check_fields(cls, fields, f'view {name!r}')
    absent = [f.name for f in dataclasses.fields(cls) if f.name not in fields
              and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if absent:
      raise UserInputError(f'view {name!r} needs field(s) {", ".join(absent)}')
  return cls(**fields)
