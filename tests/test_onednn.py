"""oneDNN convolutions (segae_jax.native, conv_impl='onednn') against XLA's own convolutions
(whole models on every path: tests/test_conv_ops.py).

Tolerances: float32 values 1e-5 relative/absolute, input gradients 1e-5, kernel gradients 1e-5
relative plus 1e-4 absolute (sums over batch x positions in another order), the absolute ones
times the largest value where it exceeds 1 (the wide layers' long sums); bfloat16 results
against the float32 convolution of the same bfloat16-rounded inputs, within 2% of the largest
value (bfloat16 keeps 8 significant bits: 0.4% per rounding, and the gradients are rounded
twice).
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from segae_jax.models import conv_ops
from segae_jax.native import build, onednn

NHWC = ('NHWC', 'HWIO', 'NHWC')

needs_onednn = pytest.mark.skipif(build.missing() is not None or not onednn.available(),
                                  reason=f'oneDNN handlers not available: {build.missing()}')


def test_library_is_built_and_loads_where_it_can_be():
  """Where the build can run (Linux, g++, the oneDNN wheels), `make install` built it and 'auto'
  takes it, so the rest of the suite (resume bit for bit, pmap, sharded jit, every training)
  runs on it: a broken build fails here instead of silently testing the fallback."""
  reason = build.missing()
  if reason:
    pytest.skip(reason)
  assert onednn.available(), onednn.load_error()
  assert conv_ops.resolve('auto') == 'onednn'
  assert conv_ops.resolve('onednn') == 'onednn'
  assert conv_ops.resolve('matmul_grad') == 'matmul_grad'


def _inputs(x_shape, k_shape, dtype, seed=0):
  kx, kw, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32).astype(dtype)
  w = (jax.random.normal(kw, k_shape, jnp.float32) * 0.2).astype(dtype)
  return x, w, kc


def _value_and_grads(conv, x, w, key):
  def loss(x, w):   # Every output weighted differently, so a misplaced gradient term shows.
    y = conv(x, w)
    return jnp.sum(y.astype(jnp.float32) * jax.random.normal(key, y.shape))
  return conv(x, w), jax.grad(loss, argnums=(0, 1))(x, w)


def _compare(ref, new, x, w, key):
  """new against ref (values, input and kernel gradients), new lowered to the custom calls."""
  lowered = jax.jit(lambda x, w: _value_and_grads(new, x, w, key)).lower(x, w)
  hlo = lowered.as_text()
  for target in (onednn.FORWARD, onednn.BACKWARD_DATA, onednn.BACKWARD_WEIGHTS):
    assert target in hlo, f'{target} not called: the fallback ran'
  ours = lowered.compile()(x, w)
  if x.dtype == jnp.float32:
    theirs = jax.jit(lambda x, w: _value_and_grads(ref, x, w, key))(x, w)
    (y0, (dx0, dw0)), (y1, (dx1, dw1)) = theirs, ours
    assert y1.shape == y0.shape and y1.dtype == y0.dtype
    # Absolute tolerances scale with the largest value: a sum of many terms (9 x 128 inputs per
    # output in the wide cases) carries a rounding error in proportion to their magnitude.
    scaled = lambda atol, ref: atol * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=scaled(1e-5, y0))
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=scaled(1e-5, dx0))
    np.testing.assert_allclose(dw1, dw0, rtol=1e-5, atol=scaled(1e-4, dw0))
    return
  theirs = jax.jit(lambda x, w: _value_and_grads(ref, x, w, key))(x.astype(jnp.float32),
                                                                  w.astype(jnp.float32))
  for new_leaf, ref_leaf in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    assert new_leaf.dtype == jnp.bfloat16 and new_leaf.shape == ref_leaf.shape
    scale = float(jnp.max(jnp.abs(ref_leaf)))
    np.testing.assert_allclose(new_leaf.astype(jnp.float32), ref_leaf, rtol=0, atol=0.02 * scale)


# Every convolution of the models (segae_jax/models): the U-Nets' 3x3 SAME layers and 1x1 heads,
# the VAE/AE encoders' 3x3 stride-2 SAME layers (28 -> 14 -> 7: odd sizes, uneven padding), and
# VALID and explicit padding as nn.Conv accepts them.
CONV_CASES = [
    ((2, 8, 8, 3), (3, 3, 3, 5), (1, 1), 'SAME'),
    ((2, 7, 9, 3), (3, 3, 3, 4), (2, 2), 'SAME'),
    ((2, 8, 8, 4), (3, 3, 4, 6), (2, 2), 'SAME'),
    ((2, 6, 6, 4), (1, 1, 4, 3), (1, 1), 'SAME'),
    ((2, 9, 9, 2), (3, 3, 2, 4), (2, 1), 'VALID'),
    ((2, 6, 6, 4), (3, 2, 4, 3), (1, 1), ((2, 0), (1, 3))),
]
# The decoders' transposed convolutions: the VAE/AE's 3x3 stride 2 SAME (7 -> 14 -> 28), the
# U-Net's 2x2 stride 2 VALID up-convolution, and 3x3 VALID and explicit padding.
TRANSPOSE_CASES = [
    ((2, 4, 4, 3), (3, 3, 3, 5), (2, 2), 'SAME'),
    ((2, 7, 7, 4), (3, 3, 4, 1), (2, 2), 'SAME'),
    ((2, 4, 5, 3), (2, 2, 3, 4), (2, 2), 'VALID'),
    ((2, 3, 3, 2), (3, 3, 2, 2), (2, 2), 'VALID'),
    ((2, 4, 4, 3), (3, 3, 3, 2), (2, 2), ((1, 2), (2, 1))),
]
# The widths training runs (unet64's 32-256 channels): oneDNN picks blocked weight layouts and
# other kernels for them than for the few channels above. 3x3 SAME 32->64, 64->32 (stride 2) and
# 128->128; the U-Net's 2x2 up-convolutions 32->64 and 64->32, a 3x3 stride-2 128->128.
WIDE_CONV_CASES = [
    ((2, 16, 16, 32), (3, 3, 32, 64), (1, 1), 'SAME'),
    ((1, 16, 16, 64), (3, 3, 64, 32), (2, 2), 'SAME'),
    ((2, 8, 8, 128), (3, 3, 128, 128), (1, 1), 'SAME'),
]
WIDE_TRANSPOSE_CASES = [
    ((2, 8, 8, 32), (2, 2, 32, 64), (2, 2), 'VALID'),
    ((1, 8, 8, 64), (2, 2, 64, 32), (2, 2), 'VALID'),
    ((2, 4, 4, 128), (3, 3, 128, 128), (2, 2), 'SAME'),
]
# bfloat16 runs the same handlers with another data type; the default suite checks it on the
# layers the models use most, `make test-slow` on all.
BF16_CASES = [CONV_CASES[0], CONV_CASES[1], TRANSPOSE_CASES[1], TRANSPOSE_CASES[2]]


def _bf16_in_default_suite(cases):
  """(case, dtype) pairs: float32 for every case, bfloat16 for those in BF16_CASES (the rest of
  bfloat16 under the slow marker)."""
  return [(*case, jnp.float32) for case in cases] + [
      pytest.param(*case, jnp.bfloat16, marks=() if case in BF16_CASES else pytest.mark.slow)
      for case in cases]


@needs_onednn
@pytest.mark.parametrize('x_shape,k_shape,strides,padding,dtype',
                         _bf16_in_default_suite(CONV_CASES)
                         + [(*case, jnp.float32) for case in WIDE_CONV_CASES])
def test_conv_matches_lax(x_shape, k_shape, strides, padding, dtype):
  x, w, key = _inputs(x_shape, k_shape, dtype)
  ref = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  new = lambda x, w: conv_ops.onednn_conv_general_dilated(x, w, strides, padding,
                                                          dimension_numbers=NHWC)
  _compare(ref, new, x, w, key)


@needs_onednn
@pytest.mark.parametrize('x_shape,k_shape,strides,padding,dtype',
                         _bf16_in_default_suite(TRANSPOSE_CASES)
                         + [(*case, jnp.float32) for case in WIDE_TRANSPOSE_CASES])
def test_conv_transpose_matches_lax(x_shape, k_shape, strides, padding, dtype):
  x, w, key = _inputs(x_shape, k_shape, dtype, seed=1)
  ref = lambda x, w: lax.conv_transpose(x, w, strides, padding, dimension_numbers=NHWC)
  new = lambda x, w: conv_ops.conv_transpose(x, w, strides, padding,
                                             conv=conv_ops.onednn_conv_general_dilated)
  _compare(ref, new, x, w, key)


@needs_onednn
def test_forward_by_hand():
  # A 3x3 ones kernel over a 1x3x3 image of 0..8, padding 1: each output sums its neighbourhood.
  x = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1)
  y = onednn.conv(x, jnp.ones((3, 3, 1, 1)), (1, 1), ((1, 1), (1, 1)))
  np.testing.assert_array_equal(y[0, ..., 0], [[8, 15, 12], [21, 36, 27], [20, 33, 24]])


@needs_onednn
def test_unsupported_operands_go_to_lax():
  """float16, feature groups and negative padding are XLA's convolutions, unchanged."""
  cases = [
      (jnp.ones((1, 6, 6, 4), jnp.float16), jnp.ones((3, 3, 4, 2), jnp.float16), 'SAME', 1),
      (jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 2, 4)), 'SAME', 2),
      (jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 2)), ((-1, 0), (0, 0)), 1),
  ]
  for x, w, padding, groups in cases:
    new = lambda x, w: conv_ops.onednn_conv_general_dilated(
        x, w, (1, 1), padding, dimension_numbers=NHWC, feature_group_count=groups)
    ref = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC,
                                   feature_group_count=groups)
    assert 'SegaeOnednn' not in jax.jit(new).lower(x, w).as_text()
    np.testing.assert_array_equal(new(x, w), ref)


@needs_onednn
def test_same_inputs_give_the_same_bits():
  """Bit-exact resume needs a deterministic step: two calls, identical gradients."""
  x, w, key = _inputs((4, 16, 16, 8), (3, 3, 8, 8), jnp.float32)
  f = jax.jit(lambda x, w: _value_and_grads(
      lambda x, w: onednn.conv(x, w, (1, 1), ((1, 1), (1, 1))), x, w, key))
  for a, b in zip(jax.tree.leaves(f(x, w)), jax.tree.leaves(f(x + 0, w + 0))):
    np.testing.assert_array_equal(a, b)


def _devices_or_skip():
  count = jax.local_device_count()
  if count < 2:
    pytest.skip(f'needs several devices, this platform has {count} (tests/conftest.py)')
  return count


def _layer_grads(x, w, t):
  """Values and both gradients of a stride-2 convolution followed by a transposed one."""
  def loss(x, w):
    y = onednn.conv(x, w, (2, 2), ((0, 1), (0, 1)))
    z = onednn.conv_transpose(y, w, x.shape[1:3], (2, 2), ((0, 1), (0, 1)))
    return jnp.sum(z * t)
  return jax.value_and_grad(loss, argnums=(0, 1))(x, w)


@needs_onednn
def test_pmap_matches_one_device():
  devices = _devices_or_skip()
  x, w, key = _inputs((devices, 2, 8, 8, 3), (3, 3, 3, 4), jnp.float32)
  t = jax.random.normal(key, x.shape[1:])
  loss, (dx, dw) = jax.pmap(_layer_grads, in_axes=(0, None, None))(x, w, t)
  for d in range(devices):
    one_loss, (one_dx, one_dw) = jax.jit(_layer_grads)(x[d], w, t)
    np.testing.assert_allclose(loss[d], one_loss, rtol=1e-6)
    np.testing.assert_array_equal(dx[d], one_dx)
    np.testing.assert_allclose(dw[d], one_dw, rtol=1e-6)


@needs_onednn
def test_sharded_jit_splits_the_batch_and_matches_one_device():
  """Batch-sharded operands: each device convolves its own examples (no all-gather of the
  activations in the compiled program), the kernel gradient is summed over the devices, and
  everything equals the one-device result."""
  devices = _devices_or_skip()
  mesh = jax.make_mesh((devices,), ('data',))
  x, w, key = _inputs((2 * devices, 8, 8, 3), (3, 3, 3, 4), jnp.float32)
  t = jax.random.normal(key, (1,) + x.shape[1:])
  batch, replicated = (NamedSharding(mesh, PartitionSpec('data')),
                       NamedSharding(mesh, PartitionSpec()))
  xs, ws = jax.device_put(x, batch), jax.device_put(w, replicated)
  sharded = jax.jit(_layer_grads)
  compiled = sharded.lower(xs, ws, t).compile().as_text()
  assert 'all-gather' not in compiled
  assert 'all-reduce' in compiled        # The kernel gradient's sum over the batch shards.
  loss, (dx, dw) = sharded(xs, ws, t)
  assert dx.sharding.spec[0] == 'data'   # The input gradient stays split like the input.
  one_loss, (one_dx, one_dw) = jax.jit(_layer_grads)(x, w, t)
  np.testing.assert_allclose(loss, one_loss, rtol=1e-6)
  np.testing.assert_allclose(dx, one_dx, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dw, one_dw, rtol=1e-5, atol=1e-5)


@pytest.fixture
def missing_library(monkeypatch, tmp_path):
  """The process as if the handler library were absent (a path with nothing there); the real
  library is loaded again afterwards."""
  monkeypatch.setenv(onednn.LIBRARY_ENV, str(tmp_path / 'absent' / build.LIBRARY_NAME))
  onednn.load_error.cache_clear()
  yield
  monkeypatch.delenv(onednn.LIBRARY_ENV)
  onednn.load_error.cache_clear()


def test_missing_library_warns_once_and_keeps_the_matmul_path(missing_library):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    assert not onednn.available()
    assert conv_ops.resolve('auto') == 'matmul_grad'
    assert conv_ops.resolve('onednn') == 'matmul_grad'
  messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
  assert len(messages) == 1 and 'absent' in messages[0] and 'make install' in messages[0]
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
  layer = conv_ops.Conv('onednn', 4, (3, 3), strides=(2, 2))
  variables = layer.init(jax.random.PRNGKey(1), x)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(layer.apply(v, x) ** 2)))
  assert 'SegaeOnednn' not in grad.lower(variables).as_text()
  reference = conv_ops.Conv('matmul_grad', 4, (3, 3), strides=(2, 2))
  jax.tree.map(np.testing.assert_array_equal, grad(variables),   # The same program, so exact.
               jax.jit(jax.grad(lambda v: jnp.sum(reference.apply(v, x) ** 2)))(variables))


def test_build_without_a_compiler_reports_and_writes_nothing(monkeypatch, tmp_path):
  output = tmp_path / build.LIBRARY_NAME
  monkeypatch.setenv('CXX', 'no-such-compiler')
  assert 'no C++ compiler' in build.build(output)
  monkeypatch.setenv('CXX', 'false')            # A compiler that fails.
  reason = build.build(output)
  if build.missing() is None:
    assert reason.startswith('g++ failed on onednn_conv.cc')
  assert list(tmp_path.iterdir()) == []          # No library, no partial file.
  assert build.main() == 0                       # `make install` goes on.
