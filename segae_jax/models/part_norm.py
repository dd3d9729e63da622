"""BatchNorm over a batch made of parts, each normalised with its own statistics.

A semi-supervised step runs several kinds of images through one model (labelled images, the
pool's weak views, its strong views), and each must be normalised with the statistics of its
own kind: a labelled image normalised with statistics mixed with the strong views' is not what
evaluation sees (training.objectives.base's module doc). Run as separate passes, that costs a
pass per kind; concatenated into one batch of consecutive parts and normalised per part here,
the convolutions run once on the whole batch and give the separate passes' outputs.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def part_index(parts: Tuple[int, ...]) -> np.ndarray:
  """int [sum(parts)]: the part of each example of a batch of consecutive parts."""
  return np.repeat(np.arange(len(parts)), parts)


def part_statistics(x: jnp.ndarray, parts: Tuple[int, ...], axis_name: Optional[str]
                    ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(mean, var), each float32 [len(parts), channels]: per part of x [batch, ..., channels]
  (consecutive examples, sizes `parts`), over its examples and positions, as nn.BatchNorm
  computes them (E[x^2] - E[x]^2, clipped at 0), averaged over the pmap axis `axis_name` when
  given (each device's parts are its shares of the same parts).

  Raises:
    ValueError: the parts do not add up to the batch.
  """
  if sum(parts) != x.shape[0]:
    raise ValueError(f'norm parts {parts} do not add up to the batch of {x.shape[0]}')
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  positions = tuple(range(1, x.ndim - 1))
  # Each example's moments, then each part's mean of its examples' (a [parts, batch] matrix of
  # 1 / size): two reductions over x, as one BatchNorm makes, whatever the number of parts
  # (slicing x per part would cost a pass over it, and its gradient a buffer, per part).
  per_example = jnp.stack([x.mean(positions), jnp.square(x).mean(positions)], axis=1)
  sizes = np.asarray(parts, np.float32)
  weights = (np.arange(len(parts))[:, None] == part_index(parts)[None]) / sizes[:, None]
  moments = jnp.einsum('pn,nkc->pkc', jnp.asarray(weights, jnp.float32), per_example,
                       precision=jax.lax.Precision.HIGHEST)          # [parts, 2, channels]
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  mean, mean2 = moments[:, 0], moments[:, 1]
  return mean, jnp.maximum(0.0, mean2 - jnp.square(mean))


class PartBatchNorm(nn.Module):
  """nn.BatchNorm in training mode on a batch of consecutive parts, each part normalised with
  its own batch statistics; only the first part's statistics update the running ones. The
  variables are nn.BatchNorm's (params 'scale', 'bias'; batch_stats 'mean', 'var', each
  float32 [channels]), so the two read and write the same checkpoints.

  On one part it is nn.BatchNorm; on parts (a, b, ...) its output is nn.BatchNorm's on each part
  alone, concatenated, and its running statistics are those of nn.BatchNorm on the first part.

  Attributes:
    parts: the parts' sizes, in order; they must add up to the batch (ValueError otherwise).
    momentum, epsilon, axis_name, dtype: as nn.BatchNorm's (dtype: of the output; None: the
      input's, promoted with the float32 parameters).
  """
  parts: Tuple[int, ...]
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [batch, ..., channels] -> the same shape, normalised per part."""
    channels = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), channels)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), channels)
    scale = self.param('scale', nn.initializers.ones, channels, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, channels, jnp.float32)
    initializing = self.is_initializing()
    mean, var = part_statistics(x, self.parts, None if initializing else self.axis_name)
    if not initializing:
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean[0]
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var[0]
    # Each example's part's statistics, [batch, 1, ..., 1, channels].
    index = part_index(self.parts)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + channels
    mul = (jax.lax.rsqrt(var + self.epsilon) * scale)[index].reshape(shape)
    y = (x - mean[index].reshape(shape)) * mul + bias
    return y.astype(self.dtype or jnp.result_type(x, jnp.float32))
