"""'fixmatch' (also 'mean_teacher'): weak-to-strong pseudo-labels. A teacher (the EMA of the
student, Tarvainen & Valpola, NeurIPS 2017; ema_decay 0: the student itself, as FixMatch, Sohn et
al., NeurIPS 2020) labels the weak view of each pool image where its confidence >= threshold; the
student learns them on the strong view, CutMix'ed between pairs of pool images (French et al.,
BMVC 2020), weighted by unlabeled_weight * a sigmoid ramp-up."""
from typing import Any, Dict

import jax
import jax.numpy as jnp

from segae_jax import losses
from segae_jax.data import views as views_lib
from segae_jax.errors import UserInputError
from segae_jax.training.objectives.base import (OBJECTIVES, Objective, forward, no_pool_error,
                                                pool_rngs)
from segae_jax.training.objectives.helpers import (CUTMIX_DEFAULTS, confidence_mask, cutmix, ema,
                                                   pair_multiple, sigmoid_rampup, strong_views)
from segae_jax.training.state import TrainState, TrainStateWithObjective, model_variables

# The registered term the pseudo-labels are learnt with (config.loss_params of it apply).
PSEUDO_LABEL_TERM = 'seg_ce'


@OBJECTIVES.register('fixmatch')
class TeacherPseudoLabels(Objective):
  """Weak-to-strong pseudo-labels with an EMA teacher and CutMix (module doc).

  loss = config.loss(labelled) + unlabeled_weight * rampup(step) * L_u, where L_u is the
  registered 'seg_ce' term (config.loss_params.seg_ce's class_weights and ignore_label apply) of
  the student on the CutMix'ed strong views against the teacher's pseudo-labels of the weak
  views, each pixel weighted by whether the teacher's confidence >= threshold and the sum
  divided by all the pool's pixels (batch 'pixel_weight': UniMatch's normalisation, Yang et al.,
  CVPR 2023). The teacher runs in inference mode (its BatchNorm running statistics, themselves
  an EMA) under stop_gradient. Metrics: 'unlabeled_ce' (L_u), 'confident_fraction' (of the
  pool's pixels), 'unlabeled_weight'. Registered also as 'mean_teacher' (an alias).
  """
  name = 'fixmatch'
  defaults = {'ema_decay': 0.99, 'threshold': 0.95, 'unlabeled_weight': 1.0,
              'rampup_fraction': 0.2, 'evaluate': 'teacher', **CUTMIX_DEFAULTS}
  EVALUATE = ('teacher', 'student')

  def __init__(self, facts, params):
    super().__init__(facts, params)
    term = {PSEUDO_LABEL_TERM: facts.loss_params.get(PSEUDO_LABEL_TERM, {})}
    self.pseudo_label_fn = losses.make_loss_fn({PSEUDO_LABEL_TERM: 1.0}, term)

  def check(self) -> None:
    facts, where = self.facts, 'config.objective_params'
    if not facts.segments:
      raise UserInputError(f'config.objective={self.name!r} learns pseudo-labels: model '
                           f'{facts.model!r} does not segment')
    if not facts.has_pool:
      raise no_pool_error(f'config.objective={self.name!r}')
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
    return {'unlabeled': strong_views(self.facts.strong_augment, self.params)}

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

  def pseudo_labeled(self, state: TrainState, pool, rngs) -> Dict[str, jnp.ndarray]:
    """The pool's strong views CutMix'ed in pairs, as the student's pass batch: 'image' (its
    input), 'segmentation' (the teacher's pseudo-labels of the weak views, mixed alike) and
    'pixel_weight' (1 where the teacher was confident, 0 elsewhere)."""
    teacher_logits = state.apply_fn(self.teacher_variables(state), pool['image'], train=False,
                                    rngs=rngs)['seg_logits']
    labels, _, confident = confidence_mask(
        jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)), self.params['threshold'])
    # Thresholding commutes with the mix: the box moves the confident mask with its labels.
    strong, labels, confident = cutmix(pool['cutmix'], pool['strong'], labels, confident)
    return {'image': strong, 'segmentation': labels, 'pixel_weight': confident}

  def loss(self, params, state, batch, rngs, axis_name):
    outputs, stats = forward(state, params, batch['image'], rngs)
    supervised, metrics = self.loss_fn(outputs, batch, axis_name)
    pseudo = self.pseudo_labeled(state, batch['unlabeled'], rngs)
    student, _ = forward(state, params, pseudo['image'], pool_rngs(rngs))
    metrics['unlabeled_ce'], _ = self.pseudo_label_fn(student, pseudo, axis_name)
    metrics['confident_fraction'] = jnp.mean(pseudo['pixel_weight'])
    metrics['unlabeled_weight'] = (self.params['unlabeled_weight']
                                   * sigmoid_rampup(state.step, self.rampup_steps))
    metrics['loss'] = supervised + metrics['unlabeled_weight'] * metrics['unlabeled_ce']
    return metrics['loss'], metrics, stats


OBJECTIVES.alias('mean_teacher', 'fixmatch')
