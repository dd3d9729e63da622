"""What every loss term shares: the registry, the metrics type and means over real examples."""
from typing import Callable, Dict, Mapping, Tuple

import jax
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


def weighted_mean(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """sum(values * weights) / sum(weights) over every element (0 when all weights are 0).

  With class weights this is PyTorch's CrossEntropyLoss(weight=...) convention: the weights
  re-balance classes rather than rescale the loss. Shapes: any, the same for both.
  """
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def softmax_focal(logits: jnp.ndarray, labels: jnp.ndarray, gamma: float) -> jnp.ndarray:
  """Softmax focal loss per item, FL = -(1 - p_t)^gamma * log p_t (Lin et al., "Focal Loss for
  Dense Object Detection", ICCV 2017, Eq. 5 without alpha; gamma = 0 gives cross-entropy).

  optax ships only the sigmoid (binary / multi-label) focal loss, so the softmax form is here.

  Args:
    logits: float [..., classes] (e.g. [batch, classes] or [batch, height, width, classes]).
    labels: int [...] class ids in [0, classes), the shape of logits without its last axis.
    gamma: focusing parameter >= 0.
  Returns:
    float [...], nats.
  """
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
  return -jnp.power(1.0 - jnp.exp(log_p), gamma) * log_p
