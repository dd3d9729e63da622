"""The pure step functions, train_step and eval_step, and the keys and bindings they run with.

train_step is the same for every training method: the objective (training/objectives/)
computes the loss of a step and updates its own state. The data-parallel strategy
(segae_jax.training.parallel) compiles the steps with pmap or sharded jit.
"""
import functools
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections

from segae_jax import losses
from segae_jax.batch import per_example
from segae_jax.training import metrics as metrics_lib, objectives as objectives_lib
from segae_jax.training.state import TrainState, float32_outputs, keep_if_finite


# Folded into a step's key for the 'examples' stream (any constant other draws do not use).
EXAMPLES_STREAM = 0x5E6A


def _step_rngs(rng: jax.Array, step, axis_name: Optional[str]) -> Dict[str, jax.Array]:
  # Randomness is a function of (run key, step[, device]), so a resumed run draws what an
  # uninterrupted one would have drawn.
  # 'examples' is the same on every device: an objective draws per example from it with the
  # example's index in the whole batch (objectives.helpers.channel_dropout), so its draws are
  # the same under pmap, sharded jit and one device. The models' streams are per device.
  rng = jax.random.fold_in(rng, step)
  examples = jax.random.fold_in(rng, EXAMPLES_STREAM)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  reparam, dropout = jax.random.split(rng)
  return {'reparam': reparam, 'dropout': dropout, 'examples': examples}


def loss_scale_for(config: ml_collections.ConfigDict) -> float:
  """config.loss_scale for float16 training, 1 otherwise (bfloat16 has float32's range)."""
  return float(config.loss_scale) if config.get('compute_dtype') == 'float16' else 1.0


def run_keys(seed: int):
  """(init_rng, run_rng) of a run with config.seed = `seed`: init_rng initialises the parameters,
  run_rng (saved in every checkpoint) seeds each train step."""
  return tuple(jax.random.split(jax.random.PRNGKey(seed)))


def evaluation_key(seed: int) -> jax.Array:
  """The PRNG key of every evaluation of a run (the VAE's sampled latents): training and
  `segae_jax.tools.evaluate` both call this, so the evaluation of a restored run reproduces the
  run's own test metrics."""
  return jax.random.fold_in(run_keys(seed)[1], 2**31 - 1)


def step_functions(config: ml_collections.ConfigDict,
                   objective: Optional[objectives_lib.Objective] = None):
  """(train_step, eval_step) bound to `objective` (objectives.make; default objectives.plain:
  config.loss, the student evaluated), config's loss and loss scale, not yet compiled."""
  objective = objective or objectives_lib.plain(config)
  loss_fn = losses.make_loss_fn(config.loss, config.get('loss_params'))
  return (functools.partial(train_step, objective=objective, loss_scale=loss_scale_for(config)),
          functools.partial(eval_step, objective=objective, loss_fn=loss_fn))


def train_step(state: TrainState, batch: Mapping[str, Any], rng: jax.Array, *,
               objective: objectives_lib.Objective, axis_name: Optional[str] = None,
               loss_scale: float = 1.0):
  """One optimisation step on `batch` (pure).

  Args:
    state: the TrainState (with the objective's state, if it has any).
    batch: {'image': float32 [batch, height, width, channels] in [0, 1], ...} and, with an
      unlabelled pool, 'unlabeled': {...} (data.inputs).
    rng: the run's PRNG key; the step's key is derived from it and state.step.
    objective: the training method (objectives.make): the step's loss, its metrics, and the
      update of its own state after the optimizer step.
    axis_name: the pmap axis to average gradients and metrics over, or None; the loss terms
      reduce their numerators and denominators over it (losses.base.axis_mean).
    loss_scale: the loss is multiplied by this before differentiation and the gradients divided
      by it (static loss scaling for float16 compute; Micikevicius et al., "Mixed Precision
      Training", ICLR 2018, Sec. 3.2). 1 for float32/bfloat16.

  Returns:
    (new state, metrics: {'loss', each loss term, the objective's own, 'grad_norm',
    'nonfinite'} float32 scalars). 'nonfinite' is 1 when a metric or the gradient norm is NaN or
    infinite; the new state then keeps every array of the old one (only the step advances), so
    no non-finite value enters the state whatever config.nonfinite decides.
  """
  rngs = _step_rngs(rng, state.step, axis_name)

  def compute_loss(params):
    loss, step_metrics, batch_stats = objective.loss(params, state, batch, rngs, axis_name)
    return loss * loss_scale, (step_metrics, batch_stats)

  (_, (step_metrics, batch_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params)
  if loss_scale != 1.0:
    grads = jax.tree.map(lambda g: g / loss_scale, grads)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    step_metrics = jax.lax.pmean(step_metrics, axis_name)
  step_metrics['grad_norm'] = jnp.sqrt(sum(jnp.sum(jnp.square(g))
                                           for g in jax.tree.leaves(grads)))
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in step_metrics.values()]))
  new_state = state.apply_gradients(grads=grads)
  if batch_stats:
    new_state = new_state.replace(batch_stats=batch_stats)
  new_state = keep_if_finite(finite, objective.update(new_state), state)
  step_metrics['nonfinite'] = 1.0 - finite.astype(jnp.float32)
  return new_state, step_metrics


def eval_step(state: TrainState, batch: Mapping[str, jnp.ndarray], rng: jax.Array, *,
              objective: objectives_lib.Objective, loss_fn: losses.LossFn,
              axis_name: Optional[str] = None) -> Dict[str, jnp.ndarray]:
  """Sums over the real examples of `batch` (pure), with the variables the objective evaluates
  (the student, or an EMA teacher).

  `batch['valid']` (float32 [batch]) marks real examples. Returns {'count': number of real
  examples, name: sum of the per-example metric} for the loss terms (and reconstruction metrics
  when the model reconstructs), plus for segmentation models 'confusion': float32
  [classes, classes] pixel counts C[true, predicted]. Summing over all batches (and devices: psum
  over `axis_name`) gives exact values over the split.
  """
  rngs = _step_rngs(rng, 0, axis_name)
  outputs = float32_outputs(state.apply_fn(objective.eval_variables(state), batch['image'],
                                           train=False, rngs=rngs))
  # Every test image counts for evaluation, also when training hid some labels.
  batch = {k: v for k, v in batch.items() if k != 'labeled'}
  _, values = loss_fn(outputs, batch)
  if 'rec_logits' in outputs:
    values.update(metrics_lib.reconstruction_metrics(outputs, batch))
  count = jnp.sum(batch['valid'])
  sums = {k: v * count for k, v in values.items()}
  sums['count'] = count
  if 'seg_logits' in outputs:
    pixel_weights = jnp.broadcast_to(per_example(batch['valid'], batch['segmentation']),
                                     batch['segmentation'].shape)
    sums['confusion'] = metrics_lib.confusion_matrix(
        batch['segmentation'], jnp.argmax(outputs['seg_logits'], -1),
        outputs['seg_logits'].shape[-1], pixel_weights)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
