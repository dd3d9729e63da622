"""What every loss term shares: the registry, the metrics type and means over real examples."""
from typing import Callable, Dict, Mapping, Tuple

import jax.numpy as jnp

from segae_jax.registry import Registry

Metrics = Dict[str, jnp.ndarray]
LossFn = Callable[[Mapping[str, jnp.ndarray], Mapping[str, jnp.ndarray]], Tuple[jnp.ndarray, Metrics]]

LOSSES: Registry = Registry('loss')


def batch_mean(per_example: jnp.ndarray, batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  """Mean of a [batch] array over the real examples (batch['valid'] == 1), or over all of them."""
  valid = batch.get('valid')
  if valid is None:
    return jnp.mean(per_example)
  return jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def sum_per_example(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(x.reshape((x.shape[0], -1)), axis=-1)
