"""PartBatchNorm: a batch of consecutive parts, each normalised with its own statistics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segae_jax.models.part_norm import PartBatchNorm, part_statistics


def _variables(channels):
  return {'params': {'scale': jnp.arange(1.0, channels + 1), 'bias': jnp.arange(channels) / 2},
          'batch_stats': {'mean': jnp.full((channels,), 0.5), 'var': jnp.full((channels,), 2.0)}}


def test_part_statistics_by_hand():
  """Parts (2, 1) of one channel holding 1, 3 | 5: means (2, 5), variances (1, 0)."""
  x = jnp.array([1.0, 3.0, 5.0]).reshape(3, 1, 1, 1)
  mean, var = part_statistics(x, (2, 1), None)
  np.testing.assert_allclose(mean[:, 0], [2.0, 5.0])
  np.testing.assert_allclose(var[:, 0], [1.0, 0.0])
  with pytest.raises(ValueError, match=r'do not add up to the batch of 3'):
    part_statistics(x, (2, 2), None)


def test_each_part_is_normalised_as_batchnorm_normalises_it_alone():
  """Parts (3, 7) of different spreads: nn.BatchNorm on each part alone, concatenated, and the
  running statistics of nn.BatchNorm on the first part; the variables are nn.BatchNorm's."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.concatenate([rng.normal(2, 3, (3, 4, 4, 5)), rng.normal(-1, 0.5, (7, 4, 4, 5))]
                                 ).astype(np.float32))
  variables = _variables(5)
  parted = PartBatchNorm((3, 7))
  plain = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  assert (jax.tree.map(jnp.shape, parted.init(jax.random.PRNGKey(0), x))
          == jax.tree.map(jnp.shape, plain.init(jax.random.PRNGKey(0), x)))
  y, stats = parted.apply(variables, x, mutable=['batch_stats'])
  first, first_stats = plain.apply(variables, x[:3], mutable=['batch_stats'])
  second, _ = plain.apply(variables, x[3:], mutable=['batch_stats'])
  np.testing.assert_allclose(y, jnp.concatenate([first, second]), atol=5e-5)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(first_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_under_pmap_each_part_pools_its_shares_over_the_devices():
  """Each device holds its share of every part: the statistics are the parts' over all the
  devices, as one device computes them on the whole parts."""
  if jax.device_count() < 2:
    pytest.skip('needs several devices (tests/conftest.py forces 4 CPU devices)')
  rng = np.random.default_rng(1)
  labeled = rng.normal(1, 2, (4, 3, 3, 2)).astype(np.float32)
  pool = rng.normal(-3, 1, (2, 3, 3, 2)).astype(np.float32)
  variables = _variables(2)
  whole, stats = PartBatchNorm((4, 2)).apply(
      variables, jnp.concatenate([labeled, pool]), mutable=['batch_stats'])
  shares = np.stack([np.concatenate([labeled[2 * d:2 * d + 2], pool[d:d + 1]]) for d in (0, 1)])
  split, split_stats = jax.pmap(
      lambda x: PartBatchNorm((2, 1), axis_name='d').apply(variables, x, mutable=['batch_stats']),
      axis_name='d', devices=jax.devices()[:2])(shares)
  for d in (0, 1):
    np.testing.assert_allclose(split[d, :2], whole[2 * d:2 * d + 2], atol=1e-5)
    np.testing.assert_allclose(split[d, 2], whole[4 + d], atol=1e-5)
    for a, b in zip(jax.tree.leaves(split_stats), jax.tree.leaves(stats)):
      np.testing.assert_allclose(a[d], b, atol=1e-6)
