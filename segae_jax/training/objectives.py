"""Training methods as registered objectives (config.objective, config.objective_params).

An objective is what one train step optimises and how: the forward passes of a step (the views
they see, teacher passes under stop_gradient), their loss, its own state beside the TrainState
(e.g. an EMA teacher) and that state's update after the optimizer step, and which variables
evaluation, checkpoints_best/ and the tools use. train_step (training/step.py) is the same for
all of them.

Batches (data.inputs): the labelled examples ('image', 'segmentation', ...; every example when the
run has no pool) and, with an unlabelled pool, batch['unlabeled'] ({'image': the weak view, plus
the views the objective asked for, data.views}). The objectives here:

  'supervised'   config.loss on the labelled examples; with a pool, its terms that need no masks
                 (reconstruction, KL, sparsity) over every image of the step, labelled and pool
                 (the alpha-weighted joint objective of the SegAE). Without a pool this is the
                 training of every earlier release, bit for bit.
  'masked_rec'   as 'supervised', with the pool's images (or, for a model that does not segment,
                 every image) masked in patches: the model sees x * (1 - m) and the
                 reconstruction terms count the hidden pixels only (MAE, He et al., CVPR 2022;
                 SimMIM, Xie et al., CVPR 2022).
  'denoising'    config.loss on the clean labelled examples, plus weight * the noise-prediction
                 error on the pool's images noised as x~ = (x + sigma * eps) / sqrt(1 + sigma^2)
                 (Brempong et al., CVPR-W 2022); for a model that does not segment, that error on
                 every image is the whole loss.
  'supervised_strong'  as 'supervised', the labelled images seen through the strong view and
                 CutMix'ed with their masks: the teacher methods' augmentation without a teacher.
  'fixmatch', 'mean_teacher'  weak-to-strong pseudo-labels: a teacher (the EMA of the student,
                 Tarvainen & Valpola, NeurIPS 2017; ema_decay 0: the student itself, as FixMatch,
                 Sohn et al., NeurIPS 2020) labels the weak view of each pool image where its
                 confidence >= threshold; the student learns them on the strong view, CutMix'ed
                 between pairs of pool images (French et al., BMVC 2020), weighted by
                 unlabeled_weight * a sigmoid ramp-up. The two names are one objective.

Batch normalisation: every pass runs in training mode on its own part of the batch (the
labelled part's statistics never mix with the pool's), and only the labelled pass (or, with no
labelled part, the only pass) updates the running statistics, which evaluation uses. So a pool
whose terms weigh 0 changes nothing (docs/segmentation.md measures why this matters).
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from segae_jax import data, losses, models
from segae_jax.data import views as views_lib
from segae_jax.errors import UserInputError
from segae_jax.registry import Registry
from segae_jax.training.state import (TrainState, TrainStateWithObjective, float32_outputs,
                                      model_variables)

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


def pool_rngs(rngs: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
  """The pool pass's keys: other draws (dropout, the VAE's latents) than the labelled pass's."""
  return {name: jax.random.fold_in(key, 1) for name, key in rngs.items()}


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
  image_size: Tuple[int, int]                # the training images' height, width
  num_train_steps: int
  has_pool: bool                             # data.has_pool(config)
  strong_augment: Mapping[str, Any]          # config.data.strong_augment

  @property
  def segments(self) -> bool:
    return models.segments(self.model)


class Objective:
  """Base: config.loss on the labelled pass; no state of its own; the student evaluates.

  Subclasses set `name`, their parameter `defaults`, and override what differs.
  """
  name = 'supervised'
  defaults: Mapping[str, Any] = {}

  def __init__(self, facts: RunFacts, params: Mapping[str, Any]):
    self.facts = facts
    self.params = check_params(self.name, params, self.defaults)
    self.loss_fn = losses.make_loss_fn(facts.loss, facts.loss_params)
    self.check()

  def check(self) -> None:
    """Raises UserInputError for a run this objective cannot train (the base: none)."""

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


def concat_parts(parts: Sequence[Batch]) -> Dict[str, jnp.ndarray]:
  """The reconstruction batch of several passes: 'image' (the inputs), 'target' (what each
  part reconstructs) and, if any part weights its pixels, 'target_weight' (0 = every pixel of
  that image counts; losses.reconstruction.pixel_weights)."""
  out = {'image': jnp.concatenate([p['image'] for p in parts])}
  if any('target' in p for p in parts):
    out['target'] = jnp.concatenate([losses.reconstruction_target(p) for p in parts])
  if any('target_weight' in p for p in parts):
    out['target_weight'] = jnp.concatenate([
        p.get('target_weight', jnp.zeros(p['image'].shape[:3], jnp.float32)) for p in parts])
  return out


@OBJECTIVES.register('supervised')
class Supervised(Objective):
  """config.loss, today's training; with a pool the joint reconstruction of every image (module
  doc). `unlabeled_input` is the hook the masked objective changes."""

  def __init__(self, facts: RunFacts, params: Mapping[str, Any]):
    super().__init__(facts, params)
    is_seg = lambda term: term in losses.SEGMENTATION_TERMS
    self.seg_fn = losses.make_loss_fn(facts.loss, facts.loss_params, select=is_seg)
    self.other_fn = losses.make_loss_fn(facts.loss, facts.loss_params,
                                        select=lambda term: not is_seg(term))

  def unlabeled_input(self, part: Batch) -> Batch:
    """The pass batch of the unlabelled images: the model input 'image' and what the losses
    compare it with; the plain weak view here."""
    return {'image': part['image']}

  def loss(self, params, state, batch, rngs, axis_name):
    pool = batch.get('unlabeled')
    if pool is None:
      if unlabeled_part(self.facts) == 'labeled':
        batch = dict(batch, **self.unlabeled_input(batch))
      return super().loss(params, state, batch, rngs, axis_name)
    outputs, stats = forward(state, params, batch['image'], rngs)
    pool_batch = self.unlabeled_input(pool)
    pool_outputs, _ = forward(state, params, pool_batch['image'], pool_rngs(rngs))
    seg_loss, metrics = self.seg_fn(outputs, batch, axis_name)
    shared = sorted(set(outputs) & set(pool_outputs))
    both = {k: jnp.concatenate([outputs[k], pool_outputs[k]]) for k in shared}
    other_loss, other_metrics = self.other_fn(both, concat_parts([batch, pool_batch]), axis_name)
    metrics.update(other_metrics)
    metrics['loss'] = seg_loss + other_loss
    return metrics['loss'], metrics, stats


def strong_views(facts: RunFacts, params: Mapping[str, Any]) -> list:
  """[the strong view of config.data.strong_augment, the CutMix box of the objective's cutmix_*
  fields]: what the teacher's pool and the strong baseline's labelled images are seen as."""
  return [views_lib.StrongView.from_config(facts.strong_augment),
          views_lib.CutMixBox(params['cutmix_prob'], params['cutmix_min_area'],
                              params['cutmix_max_area'], params['cutmix_min_aspect'])]


def pair_multiple(params: Mapping[str, Any]) -> int:
  """2 when CutMix mixes pairs (each device's share must hold whole pairs), else 1."""
  return 2 if params['cutmix_prob'] > 0 else 1


CUTMIX_DEFAULTS = {'cutmix_prob': 0.5, 'cutmix_min_area': 0.02, 'cutmix_max_area': 0.4,
                   'cutmix_min_aspect': 0.3}


def mixed_labeled(batch: Batch) -> Dict[str, Any]:
  """The labelled batch seen through its strong view, CutMix'ed inside pairs (swap_pairs) with
  its masks: 'image' [n, h, w, c] and 'segmentation' [n, h, w] take the partner's pixels inside
  batch['cutmix']. A pair mixes only when both of its examples have masks (batch['labeled'],
  when the batch flags them), so no pixel of a hidden mask is learnt."""
  box = batch['cutmix'] > 0
  if 'labeled' in batch:
    both = (batch['labeled'] > 0) & (swap_pairs(batch['labeled']) > 0)
    box = box & both.reshape((-1,) + (1,) * (box.ndim - 1))
  image, seg = cutmix(box, batch['strong'], batch['segmentation'])
  return dict(batch, image=image, segmentation=seg)


@OBJECTIVES.register('supervised_strong')
class StrongSupervised(Supervised):
  """'supervised' with the labelled images seen as the teacher methods see the pool: the strong
  view (data.views.StrongView, config.data.strong_augment) CutMix'ed between pairs together with
  their masks (French et al., BMVC 2020). The baseline that tells what pseudo-labels buy from
  what their augmentation buys (Oliver et al., "Realistic Evaluation of Deep Semi-Supervised
  Learning Algorithms", NeurIPS 2018, Sec. 3: the same augmentation for the baseline).
  """
  name = 'supervised_strong'
  defaults = CUTMIX_DEFAULTS

  def check(self) -> None:
    if not self.facts.segments:
      raise UserInputError(f'config.objective={self.name!r} augments masks: model '
                           f'{self.facts.model!r} does not segment')
    self.views()  # Checks the strong view's and the CutMix box's fields.

  def views(self):
    return {'labeled': strong_views(self.facts, self.params)}

  @property
  def labeled_multiple(self) -> int:
    return pair_multiple(self.params)

  def loss(self, params, state, batch, rngs, axis_name):
    return super().loss(params, state, mixed_labeled(batch), rngs, axis_name)


def needs_pool(what: str) -> UserInputError:
  """The one-line error of an objective that has no unlabelled images to train on."""
  return UserInputError(f'{what} needs unlabelled images: set config.data.unlabeled_dir, or '
                        'config.labeled_fraction < 1 with config.data.unlabeled_per_batch > 0')


def _check_reconstructs(objective: Objective) -> None:
  """Raises UserInputError unless the model reconstructs and the run has unlabelled images to
  give it: a pool, or a model that does not segment (every image is then unlabelled to it)."""
  facts, name = objective.facts, objective.name
  if not models.reconstructs(facts.model):
    raise UserInputError(f'config.objective={name!r} trains the reconstruction of a model with '
                         f'rec_logits; model {facts.model!r} has none (use segae, unet_ae, '
                         'vae_unet, ae or vae)')
  if facts.segments and not facts.has_pool:
    raise needs_pool(f'config.objective={name!r} with the segmenting model {facts.model!r}')


@OBJECTIVES.register('masked_rec')
class MaskedReconstruction(Supervised):
  """'supervised' with the unlabelled images masked in patches (module doc).

  The model sees x * (1 - m) for a patch mask m of mask_ratio of the patch_size x patch_size
  patches (data.views.PatchMask); the reconstruction terms compare with x on the hidden pixels
  only. A skip-free reconstruction path is required (segae with rec_skips=False, unet_ae,
  vae_unet, ae, vae): nothing then reaches the reconstruction but through the bottleneck, so the
  hidden pixels must be inferred from the visible context rather than interpolated from the
  neighbours a full-resolution skip would carry.
  """
  name = 'masked_rec'
  defaults = {'mask_ratio': 0.6, 'patch_size': 8}

  def check(self) -> None:
    _check_reconstructs(self)
    if self.facts.rec_skips:
      raise UserInputError(f'config.objective={self.name!r} needs a reconstruction path without '
                           'skips (the skips would carry the visible neighbours of every hidden '
                           'pixel around the bottleneck): set config.model.rec_skips=False')
    self.views()  # Checks the mask's ratio and patch size against the image size.

  def views(self):
    mask = views_lib.PatchMask(self.params['mask_ratio'], self.params['patch_size'],
                               tuple(self.facts.image_size))
    return {unlabeled_part(self.facts): [mask]}

  def unlabeled_input(self, part: Batch) -> Batch:
    image, mask = part['image'], part['mask']
    return {'image': image * (1.0 - mask[..., None]), 'target': image, 'target_weight': mask}


@OBJECTIVES.register('denoising')
class Denoising(Objective):
  """config.loss on the clean labelled images plus `weight` * the noise-prediction error
  (losses.noise_mse) on the unlabelled ones, noised as x~ = (x + sigma * eps) / sqrt(1 + sigma^2)
  with eps ~ N(0, I) drawn per example (data.views.GaussianNoise); the reconstruction head's raw
  output predicts eps (Brempong et al., "Denoising Pretraining for Semantic Segmentation",
  CVPR-W 2022, Sec. 3: sigma around 0.2, predicting the noise). For a model that does not
  segment (pretraining), the noise error on every image is the whole loss.

  The reconstruction head predicts eps here, not the image: give config.loss no reconstruction
  term for the labelled images (configs/denoising_*.py: seg_ce alone).
  """
  name = 'denoising'
  defaults = {'sigma': 0.2, 'weight': 1.0}

  def check(self) -> None:
    _check_reconstructs(self)
    views_lib.check_range('config.objective_params.sigma', self.params['sigma'], 0.0, 10.0,
                          low_open=True)
    views_lib.check_range('config.objective_params.weight', self.params['weight'], 0.0, 1e6)

  def views(self):
    return {unlabeled_part(self.facts): [views_lib.GaussianNoise()]}

  def noised(self, part: Batch) -> Dict[str, jnp.ndarray]:
    sigma = self.params['sigma']
    image = (part['image'] + sigma * part['noise']) / jnp.sqrt(1.0 + sigma ** 2)
    return {'image': image, 'target': part['noise']}

  def loss(self, params, state, batch, rngs, axis_name):
    weight = self.params['weight']
    pool = batch.get('unlabeled')
    if pool is None:  # A model that does not segment: every image is noised.
      noised = self.noised(batch)
      outputs, stats = forward(state, params, noised['image'], rngs)
      value, metrics = losses.noise_mse(outputs, noised, axis_name)
      metrics['loss'] = weight * value
      return metrics['loss'], metrics, stats
    outputs, stats = forward(state, params, batch['image'], rngs)
    supervised, metrics = self.loss_fn(outputs, batch, axis_name)
    noised = self.noised(pool)
    pool_outputs, _ = forward(state, params, noised['image'], pool_rngs(rngs))
    value, noise_metrics = losses.noise_mse(pool_outputs, noised, axis_name)
    metrics.update(noise_metrics)
    metrics['loss'] = supervised + weight * value
    return metrics['loss'], metrics, stats


def sigmoid_rampup(step, rampup_steps: int) -> jnp.ndarray:
  """exp(-5 (1 - t)^2) with t = min(step / rampup_steps, 1): 0.0067 at step 0, 1 from
  rampup_steps on (Laine & Aila, ICLR 2017, Sec. 3.1; the mean teacher's ramp-up). 1 when
  rampup_steps is 0."""
  if rampup_steps <= 0:
    return jnp.float32(1.0)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
  return jnp.exp(-5.0 * jnp.square(1.0 - t))


def ema(teacher, student, decay: float):
  """decay * teacher + (1 - decay) * student, leaf by leaf (Tarvainen & Valpola 2017, Eq. 1)."""
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


def swap_pairs(x: jnp.ndarray) -> jnp.ndarray:
  """Examples (0, 1), (2, 3), ... swapped: each one's CutMix partner. [n, ...] with n even; a
  pair never spans two devices when each device holds an even share (checked by validation)."""
  return x.reshape((x.shape[0] // 2, 2) + x.shape[1:])[:, ::-1].reshape(x.shape)


def confidence_mask(teacher_logits: jnp.ndarray, threshold: float):
  """(pseudo-labels int32 [..], confidence float32 [..], mask float32 [..]: 1 where the
  teacher's highest softmax probability is >= threshold) of logits [..., classes]."""
  probs = jax.nn.softmax(teacher_logits, axis=-1)
  confidence = jnp.max(probs, axis=-1)
  return (jnp.argmax(probs, axis=-1).astype(jnp.int32), confidence,
          (confidence >= threshold).astype(jnp.float32))


def cutmix(box: jnp.ndarray, *arrays: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
  """CutMix inside pairs (swap_pairs): where box [n, h, w] is nonzero, example i takes its
  partner's values of every array ([n, h, w] or [n, h, w, c]: the strong view, the labels,
  the confidences or confident mask), the same box for all (French et al., BMVC 2020).
  Returns the mixed arrays in the order given."""
  inside = box > 0
  return tuple(jnp.where(inside.reshape(inside.shape + (1,) * (a.ndim - inside.ndim)),
                         swap_pairs(a), a) for a in arrays)


@OBJECTIVES.register('fixmatch')
class PseudoLabel(Objective):
  """Weak-to-strong pseudo-labels with an EMA teacher and CutMix (module doc).

  loss = config.loss(labelled) + unlabeled_weight * rampup(step) * L_u, where L_u is the
  cross-entropy of the student on the CutMix'ed strong views against the teacher's pseudo-labels
  of the weak views, counted where the teacher's confidence >= threshold and divided by all the
  pool's pixels (UniMatch's normalisation, Yang et al., CVPR 2023). The teacher runs in inference
  mode (its BatchNorm running statistics, themselves an EMA) under stop_gradient. Metrics:
  'unlabeled_ce' (L_u), 'confident_fraction' (of the pool's pixels), 'unlabeled_weight'.
  """
  name = 'fixmatch'
  defaults = {'ema_decay': 0.99, 'threshold': 0.95, 'unlabeled_weight': 1.0,
              'rampup_fraction': 0.2, 'evaluate': 'teacher', **CUTMIX_DEFAULTS}
  EVALUATE = ('teacher', 'student')

  def check(self) -> None:
    facts, where = self.facts, 'config.objective_params'
    if not facts.segments:
      raise UserInputError(f'config.objective={self.name!r} learns pseudo-labels: model '
                           f'{facts.model!r} does not segment')
    if not facts.has_pool:
      raise needs_pool(f'config.objective={self.name!r}')
    views_lib.check_range(f'{where}.threshold', self.params['threshold'], 0.0, 1.0,
                          low_open=True)
    views_lib.check_range(f'{where}.ema_decay', self.params['ema_decay'], 0.0, 1.0,
                          high_open=True)
    views_lib.check_range(f'{where}.unlabeled_weight', self.params['unlabeled_weight'], 0.0, 1e6)
    views_lib.check_range(f'{where}.rampup_fraction', self.params['rampup_fraction'], 0.0, 1.0)
    if self.params['evaluate'] not in self.EVALUATE:
      raise UserInputError(f'{where}.evaluate={self.params["evaluate"]!r}: expected one of '
                           f'{", ".join(self.EVALUATE)}')
    self.views()  # Checks the strong view's and the CutMix box's fields.

  def views(self):
    return {'unlabeled': strong_views(self.facts, self.params)}

  @property
  def pool_multiple(self) -> int:
    return pair_multiple(self.params)

  @property
  def rampup_steps(self) -> int:
    return int(round(self.params['rampup_fraction'] * self.facts.num_train_steps))

  def init_state(self, state: TrainState) -> TrainState:
    if self.params['ema_decay'] == 0:
      return state  # The student is its own teacher: nothing to keep.
    teacher = {'params': state.params, 'batch_stats': state.batch_stats}
    return TrainStateWithObjective.extend(state, {'teacher': teacher})

  def teacher_variables(self, state: TrainState) -> Dict[str, Any]:
    objective_state = getattr(state, 'objective_state', None)
    if not objective_state:
      return model_variables(state)
    teacher = objective_state['teacher']
    return model_variables(state.replace(batch_stats=teacher['batch_stats']), teacher['params'])

  def update(self, state: TrainState) -> TrainState:
    if not getattr(state, 'objective_state', None):
      return state
    decay = self.params['ema_decay']
    teacher = ema(state.objective_state['teacher'],
                  {'params': state.params, 'batch_stats': state.batch_stats}, decay)
    return state.replace(objective_state={'teacher': teacher})

  def eval_variables(self, state: TrainState) -> Dict[str, Any]:
    if self.params['evaluate'] == 'teacher':
      return self.teacher_variables(state)
    return model_variables(state)

  def loss(self, params, state, batch, rngs, axis_name):
    outputs, stats = forward(state, params, batch['image'], rngs)
    supervised, metrics = self.loss_fn(outputs, batch, axis_name)
    pool = batch['unlabeled']
    teacher_logits = state.apply_fn(self.teacher_variables(state), pool['image'], train=False,
                                    rngs=rngs)['seg_logits']
    labels, _, confident = confidence_mask(
        jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)), self.params['threshold'])
    # Thresholding commutes with the mix: the box moves the confident mask with its labels.
    strong, labels, confident = cutmix(pool['cutmix'], pool['strong'], labels, confident)
    student, _ = forward(state, params, strong, pool_rngs(rngs))
    ce = optax.softmax_cross_entropy_with_integer_labels(student['seg_logits'], labels)
    metrics['unlabeled_ce'] = jnp.mean(ce * confident)  # Divided by all pixels.
    metrics['confident_fraction'] = jnp.mean(confident)
    metrics['unlabeled_weight'] = (self.params['unlabeled_weight']
                                   * sigmoid_rampup(state.step, self.rampup_steps))
    metrics['loss'] = supervised + metrics['unlabeled_weight'] * metrics['unlabeled_ce']
    return metrics['loss'], metrics, stats


@OBJECTIVES.register('mean_teacher')
class MeanTeacher(PseudoLabel):
  """The same objective as 'fixmatch' under the name of its teacher (Tarvainen & Valpola 2017)."""
  name = 'mean_teacher'


def unlabeled_part(facts: RunFacts) -> Optional[str]:
  """Which batch part holds the unlabelled images: 'unlabeled' (the pool), 'labeled' for a model
  that does not segment (every image is unlabelled to it), or None."""
  if facts.has_pool:
    return 'unlabeled'
  return None if facts.segments else 'labeled'


def run_facts(config: ml_collections.ConfigDict, image_size: Sequence[int],
              has_pool: bool) -> RunFacts:
  """The RunFacts of a training config whose images are `image_size` (height, width)."""
  return RunFacts(loss=dict(config.loss), loss_params=dict(config.get('loss_params') or {}),
                  model=config.model.name, rec_skips=bool(config.model.get('rec_skips', False)),
                  image_size=tuple(int(s) for s in image_size[:2]),
                  num_train_steps=int(config.num_train_steps), has_pool=has_pool,
                  strong_augment=dict(config.data.get('strong_augment') or {}))


def plain(config: ml_collections.ConfigDict) -> Objective:
  """The base objective of `config`: config.loss on the batch's images, the student evaluated
  (for steps built outside a training run: benchmarks, evaluating restored variables)."""
  return Objective(run_facts(config, (0, 0), has_pool=False), {})


def make(config: ml_collections.ConfigDict, image_size: Sequence[int],
         has_pool: bool) -> Objective:
  """The objective config.objective (default 'supervised') of a run, its parameters checked.

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
