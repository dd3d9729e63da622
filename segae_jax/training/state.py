"""TrainState: what a training run carries from step to step, and the model's variables in it."""
import dataclasses
import functools
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax.training import train_state

from segae_jax.training import optimizers


class TrainState(train_state.TrainState):
  """flax TrainState (step, params, opt_state, apply_fn, tx) plus BatchNorm statistics
  (`batch_stats`, an empty dict for models without BatchNorm)."""
  batch_stats: Any = None


class TrainStateWithObjective(TrainState):
  """A TrainState plus an objective's own state (`objective_state`, e.g. {'teacher': {'params',
  'batch_stats'}} of an EMA teacher; segae_jax.training.objectives), checkpointed with the rest.
  Objectives without state keep the plain TrainState, whose checkpoints earlier releases wrote."""
  objective_state: Any = None

  @classmethod
  def extend(cls, state: TrainState, objective_state: Any) -> 'TrainStateWithObjective':
    """`state`'s fields plus `objective_state`."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return cls(**fields, objective_state=objective_state)


def create_train_state(config: ml_collections.ConfigDict, model, image_shape,
                       rng: jax.Array) -> TrainState:
  """Initialises parameters on a dummy batch [1, height, width, channels] and the optimizer."""
  params_rng, reparam_rng = jax.random.split(rng)
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {'params': params_rng, 'reparam': reparam_rng, 'dropout': reparam_rng}, dummy)
  tx, _ = optimizers.make_optimizer(config)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


def model_variables(state: TrainState, params=None) -> Dict[str, Any]:
  """The variables to `model.apply`: {'params': params (default state.params)} plus
  'batch_stats' when the model has BatchNorm."""
  variables = {'params': state.params if params is None else params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def float32_outputs(outputs: Mapping[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
  """The model's outputs in float32, whatever its compute dtype (mixed precision): losses and
  metrics are computed in float32."""
  return {k: v.astype(jnp.float32) for k, v in outputs.items()}


def keep_if_finite(finite: jnp.ndarray, new: TrainState, old: TrainState) -> TrainState:
  """`new` where `finite` (a boolean scalar) holds, else `old` in every array of the state
  (parameters, optimizer state, BatchNorm statistics, an objective's state), with new.step: a
  non-finite step advances the step count and changes nothing else."""
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return kept.replace(step=new.step)
