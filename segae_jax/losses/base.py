"""What every loss term shares: the registry, the metrics type and means over real examples."""
from typing import Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from segae_jax.registry import Registry

Metrics = Dict[str, jnp.ndarray]
LossFn = Callable[[Mapping[str, jnp.ndarray], Mapping[str, jnp.ndarray]],
                  Tuple[jnp.ndarray, Metrics]]

LOSSES: Registry = Registry('loss')


def axis_mean(numerator: jnp.ndarray, denominator: jnp.ndarray,
              axis_name: Optional[str] = None, floor: float = 1e-8) -> jnp.ndarray:
  """numerator / denominator as one mean over every device of `axis_name`.

  Without an axis (one device, or sharded jit, where the arrays are global) this is
  numerator / max(denominator, floor). Under pmap each device holds its shard's sums; the
  denominator is summed over the axis and the device's value is numerator * devices / total, so
  that the pmean the step takes of values and gradients is sum(numerators) / sum(denominators):
  the global ratio, not a mean of per-device ratios (which differ when devices hold different
  shares of labelled examples, ignored pixels or class weights). The denominator must not depend
  on the parameters (it is a count or a sum of weights).
  """
  if axis_name is None:
    return numerator / jnp.maximum(denominator, floor)
  total = jax.lax.psum(denominator, axis_name)
  return numerator * jax.lax.psum(1.0, axis_name) / jnp.maximum(total, floor)


def batch_mean(per_example: jnp.ndarray, batch: Mapping[str, jnp.ndarray],
               axis_name: Optional[str] = None) -> jnp.ndarray:
  """Mean of a [batch] array over the real examples (batch['valid'] == 1), or over all of them;
  over every device of `axis_name` (axis_mean)."""
  valid = batch.get('valid')
  if valid is None:
    return jnp.mean(per_example)  # Every device holds as many examples: pmean is exact.
  return axis_mean(jnp.sum(per_example * valid), jnp.sum(valid), axis_name, floor=1.0)


def sum_per_example(x: jnp.ndarray) -> jnp.ndarray:
  """The sum of each example of x [n, ...] over all its elements (pixels and channels): [n]."""
  return jnp.sum(x.reshape((x.shape[0], -1)), axis=-1)


def mean_per_example(x: jnp.ndarray) -> jnp.ndarray:
  """The mean of each example of x [n, ...] over all its elements (pixels and channels): [n]."""
  return jnp.mean(x.reshape((x.shape[0], -1)), axis=-1)


def weighted_mean(values: jnp.ndarray, weights: jnp.ndarray,
                  axis_name: Optional[str] = None) -> jnp.ndarray:
  """sum(values * weights) / sum(weights) over every element (0 when all weights are 0), over
  every device of `axis_name` (axis_mean).

  With class weights this is PyTorch's CrossEntropyLoss(weight=...) convention: the weights
  re-balance classes rather than rescale the loss. Shapes: any, the same for both.
  """
  return axis_mean(jnp.sum(values * weights), jnp.sum(weights), axis_name)


def reconstruction_target(batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  """What reconstruction terms compare the model's reconstruction with: batch['target'] when the
  batch has one (an objective that changed the model input 'image', e.g. by masking it), else
  batch['image'] itself. float32 [batch, height, width, channels]."""
  return batch['target'] if 'target' in batch else batch['image']


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
