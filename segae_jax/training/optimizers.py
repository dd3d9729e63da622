"""optax optimizers and learning-rate schedules built from the config, registered by name."""
from typing import Callable, Tuple

import optax

from segae_jax.errors import UserInputError
from segae_jax.registry import Registry

OPTIMIZERS = Registry('optimizer')
SCHEDULES = ('cosine', 'constant')


@OPTIMIZERS.register('adam')
def _adam(learning_rate, config):
  return optax.adam(learning_rate, b1=config.get('b1', 0.9), b2=config.get('b2', 0.999))


@OPTIMIZERS.register('adamw')
def _adamw(learning_rate, config):
  return optax.adamw(learning_rate, b1=config.get('b1', 0.9), b2=config.get('b2', 0.999),
                     weight_decay=config.get('weight_decay', 1e-4))


@OPTIMIZERS.register('sgd')
def _sgd(learning_rate, config):
  momentum = config.get('momentum', 0.9)
  return optax.sgd(learning_rate, momentum=momentum or None, nesterov=config.get('nesterov', False))


def warmup_steps(config) -> int:
  """config.warmup_steps clipped to the run's length (a shortened run keeps its warmup setting:
  warming up over the whole run rather than never reaching the peak learning rate)."""
  return min(config.warmup_steps, config.num_train_steps)


def make_schedule(config) -> optax.Schedule:
  """Linear warmup from 0 to config.learning_rate over warmup_steps(config), then cosine decay to
  config.learning_rate * config.end_lr_factor at config.num_train_steps ('cosine'), or constant."""
  lr, warmup, total = config.learning_rate, warmup_steps(config), config.num_train_steps
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(total, warmup + 1),
        end_value=lr * config.get('end_lr_factor', 0.0))
  if config.schedule == 'constant':
    if warmup == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  raise UserInputError(f'unknown config.schedule {config.schedule!r}; known: {", ".join(SCHEDULES)}')


def make_optimizer(config) -> Tuple[optax.GradientTransformation, Callable[[int], float]]:
  """config.optimizer with the schedule, after global-norm clipping when config.grad_clip_norm > 0.

  Returns:
    (optax transformation, schedule: step -> learning rate).
  """
  schedule = make_schedule(config)
  tx = OPTIMIZERS.get(config.optimizer)(schedule, config)
  if config.get('grad_clip_norm', 0.0) > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, schedule
