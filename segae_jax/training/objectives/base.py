"""The objective contract (Objective, RunFacts), the student's pass, the registry and how a run's
objective is made from its config (make, of_config, plain, default_params).

An objective is what one train step optimises and how: the forward passes of a step (the views
they see, teacher passes under stop_gradient), their loss, its own state beside the TrainState
(e.g. an EMA teacher) and that state's update after the optimizer step, and which variables
evaluation, checkpoints_best/ and the tools use. train_step (training/step.py) is the same for
all of them. The methods are one module each in this package (package doc); a user's own is
registered with segae_jax.register_objective from a module config.plugins names.

Batch normalisation: every pass runs in training mode on its own part of the batch (the
labelled part's statistics never mix with the pool's), and only the labelled pass (or, with no
labelled part, the only pass) updates the running statistics, which evaluation uses. So a pool
whose terms weigh 0 changes nothing (docs/segmentation.md measures why this matters).
"""
import dataclasses
import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segae_jax import data, losses, models
from segae_jax.data import views as views_lib
from segae_jax.errors import UserInputError
from segae_jax.registry import Registry
from segae_jax.training.state import TrainState, float32_outputs, model_variables

OBJECTIVES = Registry('objective')
Batch = Mapping[str, Any]


def forward(state: TrainState, params, images: jnp.ndarray, rngs: Mapping[str, jax.Array]
            ) -> Tuple[Dict[str, jnp.ndarray], Optional[Any]]:
  """One training-mode pass of the student: (float32 outputs, the batch statistics it computed,
  or None for a model without BatchNorm). Under pmap the model averages them over the devices
  (models built with norm_axis_name)."""
  if state.batch_stats:
    outputs, updates = state.apply_fn(model_variables(state, params), images, train=True,
                                      rngs=rngs, mutable=['batch_stats'])
    return float32_outputs(outputs), updates['batch_stats']
  return float32_outputs(state.apply_fn({'params': params}, images, train=True, rngs=rngs)), None


def pool_rngs(rngs: Mapping[str, jax.Array], index: int = 1) -> Dict[str, jax.Array]:
  """The keys of another pass than the labelled one (pass `index` >= 1 of the pool's): other
  draws (dropout, the VAE's latents) than the labelled pass's and than each other's."""
  return {name: jax.random.fold_in(key, index) for name, key in rngs.items()}


def _training_apply(state: TrainState, params, *args, method: str,
                    rngs: Mapping[str, jax.Array]):
  """state.apply_fn(..., train=True, method=method): its output, BatchNorm statistics computed
  in training mode and dropped (a pool pass never updates the running statistics)."""
  if state.batch_stats:
    out, _ = state.apply_fn(model_variables(state, params), *args, train=True, rngs=rngs,
                            method=method, mutable=['batch_stats'])
    return out
  return state.apply_fn({'params': params}, *args, train=True, rngs=rngs, method=method)


def encode_pass(state: TrainState, params, images: jnp.ndarray, rngs: Mapping[str, jax.Array]
                ) -> Tuple[jnp.ndarray, List[jnp.ndarray]]:
  """The student's encoder in training mode on a pool part: (features, skips) of a segmenting
  model's interface (models.layers.SegmentationModel.encode), so an objective can perturb them
  before decode_pass (UniMatch's feature perturbation, Yang et al., CVPR 2023, Sec. 3.3)."""
  return _training_apply(state, params, images, method='encode', rngs=rngs)


def decode_pass(state: TrainState, params, features: jnp.ndarray,
                skips: Sequence[jnp.ndarray], rngs: Mapping[str, jax.Array]
                ) -> Dict[str, jnp.ndarray]:
  """The student's decoder in training mode on (features, skips) from encode_pass, perturbed or
  not: the model's float32 outputs ('seg_logits' [n, h, w, classes], ...)."""
  return float32_outputs(_training_apply(state, params, features, list(skips), method='decode',
                                         rngs=rngs))


def fused_pass(model, state: TrainState, params, parts: Sequence[Sequence[Any]], method: str,
               rngs: Mapping[str, jax.Array], batch_stats=None) -> Tuple[List[Any], Any]:
  """One training-mode pass of the student over several parts of a step, each normalised by
  BatchNorm with its own statistics (models.layers.SegmentationModel.with_norm_parts): the
  outputs of separate passes over the parts at the cost of one pass over all of them.

  Args:
    model: the run's model (Objective.set_model), a SegmentationModel.
    state, params: the student's TrainState and the parameters being differentiated.
    parts: per part, the positional arguments of `method`, arrays (or lists of arrays) whose
      leading axis is the part's examples: [(images,), ...] for 'encode' and '__call__',
      [(features, skips), ...] for 'decode' (every part's pytrees alike).
    method: 'encode', 'decode' or '__call__'.
    rngs: the pass's keys (dropout, the VAE's latents), drawn over the whole concatenation.
    batch_stats: the running statistics to start from (a previous fused pass's); None: the
      state's.

  Returns:
    (per part, the method's outputs for its examples (decode's and __call__'s in float32),
    the batch statistics after the pass, updated from the first part's only; None for a model
    without BatchNorm).

  Raises:
    ValueError: no model (an objective whose set_model was not called).
  """
  if model is None:
    raise ValueError('fused_pass needs the run\'s model: call the objective\'s set_model first')
  sizes = [jax.tree.leaves(part)[0].shape[0] for part in parts]
  args = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
  apply = functools.partial(model.with_norm_parts(sizes).apply, train=True, rngs=rngs,
                            method=method)
  if state.batch_stats:
    stats = state.batch_stats if batch_stats is None else batch_stats
    out, updates = apply({'params': params, 'batch_stats': stats}, *args,
                         mutable=['batch_stats'])
    stats = updates['batch_stats']
  else:
    out, stats = apply({'params': params}, *args), None
  if method != 'encode':
    out = float32_outputs(out)
  ends = np.cumsum(sizes)
  return [jax.tree.map(lambda v, a=a, b=b: v[a:b], out)
          for a, b in zip(ends - np.asarray(sizes), ends)], stats


def check_params(name: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> Dict:
  """defaults updated with config.objective_params (`given`).

  Raises:
    UserInputError: a field the objective `name` does not have.
  """
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise UserInputError(f'config.objective_params: objective {name!r} has no field(s) '
                         f'{", ".join(unknown)}; its fields: {", ".join(sorted(defaults))}')
  return {**defaults, **dict(given)}


@dataclasses.dataclass
class RunFacts:
  """What an objective needs to know of the run besides its own parameters."""
  loss: Mapping[str, float]                  # config.loss
  loss_params: Mapping[str, Mapping]         # config.loss_params
  model: str                                 # config.model.name
  rec_skips: bool                            # the reconstruction decoder reads encoder skips
  # The training images' (height, width); None until known (the config may leave it to the
  # data: Objective.set_image_size).
  image_size: Optional[Tuple[int, int]]
  num_train_steps: int                       # (checked by training.validation)
  has_pool: bool                             # data.has_pool(config)
  strong_augment: Mapping[str, Any]          # config.data.strong_augment
  # config.data.strong_geometry: the geometric strong view's fields (data.views.AffineGrid).
  strong_geometry: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def segments(self) -> bool:
    return models.segments(self.model)


class Objective:
  """Base: config.loss on the labelled pass; no state of its own; the student evaluates.

  Subclasses set `name` (the name they are registered under), their parameter `defaults` (the
  one place they are declared: configs take them with default_params) and override what differs.
  """
  name = 'supervised'
  defaults: Mapping[str, Any] = {}

  def __init__(self, facts: RunFacts, params: Mapping[str, Any]):
    self.facts = facts
    self.params = check_params(self.name, params, self.defaults)
    self.loss_fn = losses.make_loss_fn(facts.loss, facts.loss_params)
    self.model = None
    self.check()
    if facts.image_size is not None:
      self.check_images()

  def check(self) -> None:
    """Raises UserInputError for a run this objective cannot train (the base: none)."""

  def check_images(self) -> None:
    """Raises UserInputError for training images of facts.image_size that this objective
    cannot train (the base: none); called once the size is known."""

  def set_image_size(self, image_size: Sequence[int]) -> None:
    """Records the training images' (height, width) once known (the config's, or the built
    dataset's) and checks them (check_images); views() may depend on it.

    Raises:
      UserInputError: images the objective cannot train (e.g. a patch that does not divide them).
    """
    self.facts = dataclasses.replace(self.facts,
                                     image_size=tuple(int(s) for s in image_size[:2]))
    self.check_images()

  def set_model(self, model) -> None:
    """Records the run's model (models.build's, as its strategy needs it: with norm_axis_name
    under pmap) once built, for an objective that fuses its passes (fused_pass); the others
    run the state's apply_fn. training.loop.setup calls it."""
    self.model = model

  def views(self) -> Dict[str, Sequence[views_lib.View]]:
    """{batch part ('labeled' / 'unlabeled'): the views data.inputs adds to it}."""
    return {}

  @property
  def pool_multiple(self) -> int:
    """What each device's share of the pool must be a multiple of (CutMix pairs: 2)."""
    return 1

  @property
  def labeled_multiple(self) -> int:
    """What each device's share of the labelled images must be a multiple of."""
    return 1

  @property
  def image_multiple(self) -> int:
    """What the training images' height and width must be multiples of (a folder's inferred
    image size is fitted to it: training.validation.resolve_auto)."""
    return 1

  def init_state(self, state: TrainState) -> TrainState:
    """The initial state of a run (the objective's own state added, if any)."""
    return state

  def update(self, state: TrainState) -> TrainState:
    """The state after the optimizer step (e.g. the EMA teacher moved)."""
    return state

  def eval_variables(self, state: TrainState) -> Dict[str, Any]:
    """The variables evaluation, checkpoints_best/ and the tools apply the model with."""
    return model_variables(state)

  def loss(self, params, state: TrainState, batch: Batch, rngs, axis_name: Optional[str]):
    """(scalar loss, metrics, new batch statistics or None) of one step; pure."""
    outputs, stats = forward(state, params, batch['image'], rngs)
    loss, metrics = self.loss_fn(outputs, batch, axis_name)
    return loss, metrics, stats


def reconstruction_part(facts: RunFacts) -> Optional[str]:
  """The batch part whose images the reconstruction objectives (masked, denoising) change:
  'unlabeled' (the pool), 'labeled' for a model that does not segment (every image is
  unlabelled to it, and the batch's top level holds them all), or None (neither)."""
  if facts.has_pool:
    return 'unlabeled'
  return None if facts.segments else 'labeled'


def no_pool_error(what: str) -> UserInputError:
  """The one-line error (to raise) of an objective that has no unlabelled images to train on."""
  return UserInputError(f'{what} needs unlabelled images: set config.data.unlabeled_dir, or '
                        'config.labeled_fraction < 1 with config.data.unlabeled_per_batch > 0')


def run_facts(config: ml_collections.ConfigDict, image_size: Optional[Sequence[int]],
              has_pool: bool) -> RunFacts:
  """The RunFacts of a training config whose images are `image_size` (height, width; None when
  not known yet)."""
  return RunFacts(loss=dict(config.loss), loss_params=dict(config.get('loss_params') or {}),
                  model=config.model.name, rec_skips=bool(config.model.get('rec_skips', False)),
                  image_size=None if image_size is None else tuple(
                      int(s) for s in image_size[:2]),
                  num_train_steps=config.num_train_steps, has_pool=has_pool,
                  strong_augment=dict(config.data.get('strong_augment') or {}),
                  strong_geometry=dict(config.data.get('strong_geometry') or {}))


def plain(config: ml_collections.ConfigDict) -> Objective:
  """The base objective of `config`: config.loss on the batch's images, the student evaluated
  (for steps built outside a training run: benchmarks, evaluating restored variables)."""
  return Objective(run_facts(config, None, has_pool=False), {})


def make(config: ml_collections.ConfigDict, image_size: Optional[Sequence[int]],
         has_pool: bool) -> Objective:
  """The objective config.objective (default 'supervised') of a run, its parameters checked.

  Args:
    config: a training config.
    image_size: the training images' (height, width), or None when the config leaves them to
      the data (then set_image_size once they are known).
    has_pool: data.has_pool(config).

  Raises:
    UserInputError: an unknown objective, an unknown or out-of-range parameter, or a run the
      objective cannot train (no pool, a model without the outputs it needs), in one line.
  """
  cls = OBJECTIVES.get(config.get('objective', 'supervised'))
  return cls(run_facts(config, image_size, has_pool),
             dict(config.get('objective_params') or {}))


def of_config(config: ml_collections.ConfigDict, image_shape: Sequence[int]) -> Objective:
  """make() for a run's own config (its config.json): the objective it trained with, for
  restoring its state and choosing the variables it evaluated with."""
  return make(config, image_shape[:2], data.has_pool(config))


def default_params(name: str, **overrides) -> ml_collections.ConfigDict:
  """config.objective_params of the registered objective `name`: its declared `defaults`, with
  `overrides` (e.g. default_params('fixmatch', threshold=0.8)). Every field is in the config, so
  `--config.objective_params.<field>=...` overrides it on the command line.

  Raises:
    UserInputError: an unknown objective or a field it does not have.
  """
  cls = OBJECTIVES.get(name)
  return ml_collections.ConfigDict(check_params(name, overrides, cls.defaults))
