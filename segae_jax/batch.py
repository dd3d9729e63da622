"""The batch contract: the parts of a training batch, each key's dtype and shape, and the spatial
rank, declared once. The input pipeline (segae_jax.data), the views (data.views), the objectives
(training.objectives) and the loss terms (segae_jax.losses) read their layout from here instead
of writing `[:, None, None]` or `axis=(1, 2)`, so an input of another rank (a volume, a time
series) changes SPATIAL_RANK and the kinds below, not every module.

A training batch (data.train_inputs) is a dict:
  the labelled part, at the top level: 'image' and the keys below that its dataset and views
      give ('segmentation', 'labeled', 'valid', 'label', views' keys such as 'strong');
  the unlabelled part, batch['unlabeled'] (only with a pool): 'image' (the weak view) and the
      keys of the views asked for that part.

Each key has a kind, which fixes its dtype and shape ([n] = the part's examples, S = the
SPATIAL_RANK spatial sizes, c = channels, k = classes):
  image     float32 [n, *S, c]   the model input and anything shaped like it: 'image', 'strong',
                                 'noise', 'target'
  pixel_map float32 [n, *S]      a value per pixel: 'cutmix', 'mask', 'target_weight', 'confident',
                                 'pixel_weight' (scales a segmentation term's pixels: losses)
  labels    int32   [n, *S]      class ids per pixel: 'segmentation' (ignore_label where unknown),
                                 'hidden_segmentation' (a pool's hidden masks: monitoring only)
  example   float32 [n]          a value per example: 'labeled', 'valid'
  class_id  int32   [n]          an image-level class: 'label'
  coords    float32 [n, *S, R]   a position per pixel, R = SPATIAL_RANK coordinates in pixels
                                 of another view of the example: 'grid' (data.views.AffineGrid:
                                 the (row, col) in 'image' each strong-view pixel is taken from)
A view's out key of the form `<name>_<i>` (e.g. 'strong_1', 'strong_2': two strong views of one
kind) has the kind of `<name>`.

Raises (check): BatchError, one line naming the part, the key, and what was expected.
"""
import re
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from segae_jax.errors import UserInputError

# The number of spatial axes of every per-pixel key: 2 for images [n, height, width, ...].
SPATIAL_RANK = 2

# The parts of a training batch: 'labeled' is the batch's top level, 'unlabeled' batch['unlabeled'].
LABELED, UNLABELED = 'labeled', 'unlabeled'
PARTS = (LABELED, UNLABELED)

# kind: (dtype kind, trailing axes after [n, *S]; None = no spatial axes, [n] only).
KINDS = {
    'image': ('float', 1),
    'pixel_map': ('float', 0),
    'labels': ('int', 0),
    'example': ('float', None),
    'class_id': ('int', None),
    'coords': ('float', 1),
}
# The kinds whose last axis has a fixed size: one coordinate per spatial axis.
LAST_AXIS = {'coords': SPATIAL_RANK}
KEYS = {
    'image': 'image', 'strong': 'image', 'noise': 'image', 'target': 'image',
    'clean_image': 'image',
    'cutmix': 'pixel_map', 'mask': 'pixel_map', 'target_weight': 'pixel_map',
    'confident': 'pixel_map', 'pixel_weight': 'pixel_map',
    'segmentation': 'labels', 'hidden_segmentation': 'labels',
    'labeled': 'example', 'valid': 'example',
    'label': 'class_id',
    'grid': 'coords',
}

# What check() is asked for: key names (their kinds from KEYS), or {key: kind} where a view
# declares the kind of a key of its own (None: KEYS's).
Required = Union[Iterable[str], Mapping[str, Optional[str]]]


class BatchError(UserInputError):
  """A batch part without a key it needs, or a key of the wrong shape or dtype."""


def kind_of(key: str) -> Optional[str]:
  """The kind of `key` (KEYS; '<name>_<i>' as '<name>'), or None for a key the contract does not
  declare (a user's own view may add one)."""
  if key in KEYS:
    return KEYS[key]
  match = re.fullmatch(r'(.+)_(\d+)', key)
  return KEYS.get(match.group(1)) if match else None


def numbered(name: str, count: int) -> Tuple[str, ...]:
  """The out keys of `count` views of one kind: ('strong',) for one, ('strong_1', 'strong_2')
  for two."""
  return (name,) if count == 1 else tuple(f'{name}_{i}' for i in range(1, count + 1))


def spatial_axes(x: Any, leading: int = 1) -> Tuple[int, ...]:
  """The spatial axes of a per-pixel array with `leading` axes before them: (1, 2) for
  [n, h, w] or [n, h, w, c]."""
  del x  # Same for every kind; kept so call sites read as a property of the array.
  return tuple(range(leading, leading + SPATIAL_RANK))


def example_axes(x: Any) -> Tuple[int, ...]:
  """Every axis of one example of x [n, ...]: (1, 2, 3) for [n, h, w, c], (1, 2) for [n, h, w]
  (a mean or sum per example over its pixels and channels)."""
  return tuple(range(1, x.ndim))


def spatial_shape(x: Any, leading: int = 1) -> Tuple[int, ...]:
  """(h, w) of a per-pixel array [n, h, w, ...] (or of one image [h, w, ...] with leading=0).
  `x` is an array or a shape tuple."""
  shape = tuple(x.shape if hasattr(x, 'shape') else x)
  return shape[leading:leading + SPATIAL_RANK]


def pixels_shape(x: Any) -> Tuple[int, ...]:
  """[n, h, w] of a per-pixel array [n, h, w, ...]: the shape of its pixel_map."""
  return tuple(x.shape[:1 + SPATIAL_RANK])


def per_example(values: Any, like: Any) -> Any:
  """values [n] reshaped to broadcast against `like` [n, ...] (e.g. a weight per example over
  its pixels): [n, 1, 1] for like [n, h, w]."""
  return values.reshape((-1,) + (1,) * (like.ndim - 1))


def _expected(kind: str) -> str:
  dtype, trailing = KINDS[kind]
  if trailing is None:
    return f'{dtype} [n]'
  last = [str(LAST_AXIS[kind])] if kind in LAST_AXIS else ['c'] * trailing
  axes = ', '.join(['n'] + [f's{i}' for i in range(SPATIAL_RANK)] + last)
  return f'{dtype} [{axes}]'


def _is_float(dtype: Any) -> bool:
  # bfloat16 and float8 (ml_dtypes) are numpy kind 'V': known by name.
  return dtype.kind == 'f' or str(dtype).startswith(('float', 'bfloat'))


def _fits(value: Any, kind: str, n: Optional[int], size: Optional[Tuple[int, ...]]) -> bool:
  """Whether `value` has the rank, dtype kind, example count n and spatial size of `kind`."""
  dtype, trailing = KINDS[kind]
  rank = 1 if trailing is None else 1 + SPATIAL_RANK + trailing
  if value.ndim != rank or (n is not None and value.shape[0] != n):
    return False
  if kind in LAST_AXIS and value.shape[-1] != LAST_AXIS[kind]:
    return False
  if _is_float(value.dtype) != (dtype == 'float') or (dtype == 'int' and
                                                      value.dtype.kind not in 'iub'):
    return False
  return trailing is None or size is None or spatial_shape(value) == size


def check(part: Mapping[str, Any], required: Required = ('image',),
          name: str = LABELED) -> None:
  """Checks the batch part `name` has the keys `required` and that every key of a known kind
  (KEYS, or the kind `required` gives it) has its kind's rank, dtype kind and the part's example
  count (and, per pixel, the spatial shape of the part's 'image').

  Args:
    part: {key: array [n, ...]} (nested dicts, e.g. another part, are skipped).
    required: key names, or {key: kind or None} (a view's own key and the kind it promises).
    name: the part's name, for the message.

  Raises:
    BatchError: one line naming the part, the key and what was expected.
  """
  kinds = dict(required) if isinstance(required, Mapping) else dict.fromkeys(required)
  missing = [k for k in kinds if k not in part]
  if missing:
    raise BatchError(f'batch part {name!r} has no key {missing[0]!r}; it holds '
                     f'{", ".join(sorted(part)) or "nothing"}')
  image = part.get('image')
  n = image.shape[0] if hasattr(image, 'shape') else None
  size = spatial_shape(image) if hasattr(image, 'shape') else None
  for key, value in part.items():
    kind = kinds.get(key) or kind_of(key)
    if kind is None or not hasattr(value, 'shape'):
      continue
    if kind not in KINDS:
      raise BatchError(f'batch part {name!r} key {key!r} is said to be of kind {kind!r}; '
                       f'kinds: {", ".join(KINDS)}')
    if not _fits(value, kind, n, size):
      raise BatchError(f'batch part {name!r} key {key!r} is {value.dtype} {list(value.shape)}; '
                       f'expected {kind} {_expected(kind)} with the part\'s {n} examples and '
                       f'image size {list(size) if size else "?"}')


def check_training_batch(batch: Mapping[str, Any],
                         required: Optional[Mapping[str, Required]] = None) -> None:
  """check() on each part of a training batch (a single device's or sharded jit's layout,
  [n, ...], not pmap's); `required` {part: keys or {key: kind}} (default: 'image' in each part
  present).

  Raises:
    BatchError: as check, or a part that `required` names and the batch lacks.
  """
  required = dict(required or {})
  unknown = sorted(set(required) - set(PARTS))
  if unknown:
    raise ValueError(f'required keys for unknown batch parts {unknown}; parts: {PARTS}')
  check({k: v for k, v in batch.items() if k != UNLABELED}, required.get(LABELED, ('image',)),
        LABELED)
  if UNLABELED in batch:
    check(batch[UNLABELED], required.get(UNLABELED, ('image',)), UNLABELED)
  elif UNLABELED in required:
    raise BatchError(f'the batch has no part {UNLABELED!r} (unlabelled images); keys: '
                     f'{", ".join(sorted(batch))}')
