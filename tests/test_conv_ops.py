"""The conv_impl paths (segae_jax.models.conv_ops) against XLA's own convolutions: the matmul kernel
gradient layer by layer, and every path on whole models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segae_jax import models
from segae_jax.errors import UserInputError
from segae_jax.models import conv_ops
from segae_jax.models.unet import max_pool_2x2
from segae_jax.native import build, onednn

NHWC = ('NHWC', 'HWIO', 'NHWC')
needs_onednn = pytest.mark.skipif(build.missing() is not None or not onednn.available(),
                                  reason='oneDNN handlers not available')


def _inputs(x_shape, k_shape, seed=0):
  kx, kw, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32)
  w = jax.random.normal(kw, k_shape, jnp.float32) * 0.2
  return x, w, kc


def _compare(ref, new, x, w, key):
  """Asserts new(x, w) == ref(x, w) and equal gradients, both differentiated in one jit."""
  def value_and_grads(conv, x, w):
    # A loss that weights every output differently, so a misplaced gradient term shows.
    def loss(x, w):
      y = conv(x, w)
      return jnp.sum(y * jax.random.normal(key, y.shape))
    return conv(x, w), jax.grad(loss, argnums=(0, 1))(x, w)

  (y_ref, (dx_ref, dw_ref)), (y_new, (dx_new, dw_new)) = jax.jit(
      lambda x, w: (value_and_grads(ref, x, w), value_and_grads(new, x, w)))(x, w)
  assert y_new.shape == y_ref.shape
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dx_new, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw_new, dw_ref, rtol=1e-5, atol=1e-4)


CONV_CASES = [
    # (x shape, kernel shape, strides, padding)
    ((2, 8, 8, 3), (3, 3, 3, 5), (1, 1), 'SAME'),
    pytest.param((2, 8, 8, 3), (3, 3, 3, 5), (2, 2), 'SAME', marks=pytest.mark.slow),
    ((2, 7, 9, 3), (3, 3, 3, 4), (2, 2), 'SAME'),      # odd sizes: asymmetric SAME padding
    pytest.param((2, 8, 8, 3), (3, 3, 3, 5), (1, 1), 'VALID', marks=pytest.mark.slow),
    ((2, 9, 9, 2), (3, 3, 2, 4), (2, 1), 'VALID'),
    pytest.param((2, 6, 6, 4), (1, 1, 4, 3), (1, 1), 'SAME', marks=pytest.mark.slow),
    ((2, 6, 6, 4), (3, 2, 4, 3), (1, 1), ((2, 0), (1, 3))),   # explicit, uneven padding
    pytest.param((3, 5, 5, 1), (3, 3, 1, 6), (1, 1), 'SAME', marks=pytest.mark.slow),
]


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', CONV_CASES)
def test_conv_matches_lax(x_shape, k_shape, strides, padding):
  x, w, key = _inputs(x_shape, k_shape)
  ref = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  new = lambda x, w: conv_ops.conv_general_dilated(x, w, strides, padding,
                                                   dimension_numbers=NHWC)
  _compare(ref, new, x, w, key)


TRANSPOSE_CASES = [
    ((2, 4, 4, 3), (3, 3, 3, 5), (2, 2), 'SAME'),      # the ConvDecoder's layers
    ((2, 4, 5, 3), (2, 2, 3, 4), (2, 2), 'VALID'),     # the U-Net's up-convolution
    ((2, 4, 4, 3), (4, 4, 3, 2), (2, 2), 'SAME'),
    pytest.param((2, 3, 3, 2), (3, 3, 2, 2), (2, 2), 'VALID', marks=pytest.mark.slow),
    pytest.param((1, 5, 5, 2), (3, 3, 2, 3), (1, 1), 'SAME', marks=pytest.mark.slow),
]


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', TRANSPOSE_CASES)
def test_conv_transpose_matches_lax(x_shape, k_shape, strides, padding):
  x, w, key = _inputs(x_shape, k_shape, seed=1)
  ref = lambda x, w: lax.conv_transpose(x, w, strides, padding, dimension_numbers=NHWC)
  new = lambda x, w: conv_ops.conv_transpose(x, w, strides, padding)
  _compare(ref, new, x, w, key)


def test_kernel_grad_by_hand():
  # 1x1 input channel, 2x2 kernel, stride 1, VALID on a 2x3 image: dW[i, j] = sum_o x[o + (i, j)]
  # * dy[o] with dy = ones over the 1x2 output.
  x = jnp.arange(6, dtype=jnp.float32).reshape(1, 2, 3, 1)   # [[0, 1, 2], [3, 4, 5]]
  dy = jnp.ones((1, 1, 2, 1), jnp.float32)
  dw = conv_ops.kernel_grad(x, dy, (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1))
  np.testing.assert_array_equal(dw[..., 0, 0], [[0 + 1, 1 + 2], [3 + 4, 4 + 5]])


def test_unsupported_arguments_fall_back_to_lax():
  x, w, _ = _inputs((1, 6, 6, 4), (3, 3, 2, 4))
  out = conv_ops.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC,
                                      feature_group_count=2)
  ref = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC,
                                 feature_group_count=2)
  np.testing.assert_array_equal(out, ref)
  jaxpr = str(jax.make_jaxpr(lambda w: conv_ops.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC, feature_group_count=2))(w))
  assert 'custom_vjp' not in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda w: conv_ops.conv_general_dilated(
      x, w[:, :, :4], (1, 1), 'SAME', dimension_numbers=NHWC))(jnp.zeros((3, 3, 4, 4))))
  assert 'custom_vjp' in jaxpr


def test_conv_transpose_module_is_nn_conv_transpose():
  x, _, _ = _inputs((2, 4, 4, 3), (1, 1, 1, 1))
  ours = conv_ops.ConvTranspose(5, (3, 3), strides=(2, 2), padding='SAME', impl='matmul_grad')
  flax_ = nn.ConvTranspose(5, (3, 3), strides=(2, 2), padding='SAME')
  v_ours = ours.init(jax.random.PRNGKey(3), x)
  v_flax = flax_.init(jax.random.PRNGKey(3), x)
  # Same names, shapes and initial values, so checkpoints load into either.
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_flax)
  v = jax.tree.map(lambda a: a + 0.1, v_flax)   # a non-zero bias too
  np.testing.assert_allclose(ours.apply(v, x), flax_.apply(v, x), rtol=1e-6, atol=1e-6)
  xla = conv_ops.ConvTranspose(5, (3, 3), strides=(2, 2), padding='SAME', impl='xla')
  np.testing.assert_array_equal(xla.apply(v, x), flax_.apply(v, x))


def test_resolve():
  assert conv_ops.resolve('xla') == 'xla'
  cpu = 'onednn' if onednn.available() else 'matmul_grad'
  assert conv_ops.resolve('auto') == (cpu if jax.default_backend() == 'cpu' else 'xla')
  with pytest.raises(UserInputError, match="conv_impl='fast'"):
    conv_ops.resolve('fast')


def test_max_pool_2x2_matches_nn_max_pool_after_relu():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8, 3))
  np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
  # After a ReLU (as in the U-Nets), ties are zeros and the gradients agree exactly.
  weights = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 3))
  g_ours = jax.grad(lambda x: jnp.sum(max_pool_2x2(nn.relu(x)) * weights))(x)
  g_flax = jax.grad(lambda x: jnp.sum(nn.max_pool(nn.relu(x), (2, 2), (2, 2)) * weights))(x)
  np.testing.assert_array_equal(g_ours, g_flax)


def test_max_pool_2x2_gradient_goes_to_the_first_maximum_of_each_window():
  # One 4x4 channel, windows [[1, 5], [5, 2]] (tie: the first 5 in row-major order takes the
  # gradient, none is split or lost), [[0, 0], [0, 0]], [[3, 9], [1, 9]] and [[7, 1], [1, 1]].
  x = jnp.array([[1, 5, 0, 0], [5, 2, 0, 0], [3, 9, 7, 1], [1, 9, 1, 1]], jnp.float32)
  x = x.reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(max_pool_2x2(x)[0, ..., 0], [[5, 0], [9, 7]])
  g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * jnp.array([[1., 2.], [3., 4.]])[None, ..., None]))(x)
  np.testing.assert_array_equal(g[0, ..., 0], [[0, 1, 2, 0], [0, 0, 0, 0], [0, 3, 4, 0],
                                                [0, 0, 0, 0]])


@pytest.mark.parametrize('name,fields,impl', [
    ('unet', {'features': (4, 8)}, 'matmul_grad'),
    pytest.param('vae', {'latent_dim': 4, 'features': (4, 8), 'hidden_dim': 16}, 'matmul_grad',
                 marks=pytest.mark.slow),   # its layers are covered one by one above
    pytest.param('segnet', {'features': (4, 8)}, 'matmul_grad', marks=pytest.mark.slow),
    # oneDNN's convolutions (tests/test_onednn.py has them layer by layer): BatchNorm and the
    # up-convolution, strided and transposed layers, two decoders.
    # The vae and segae ones under `make test-faults` (CI runs it), for the default suite's time.
    pytest.param('unet', {'features': (4, 8)}, 'onednn', marks=needs_onednn),
    pytest.param('vae', {'latent_dim': 4, 'features': (4, 8), 'hidden_dim': 16}, 'onednn',
                 marks=[needs_onednn, pytest.mark.faults]),
    pytest.param('segae', {'features': (4, 8)}, 'onednn', marks=[needs_onednn, pytest.mark.faults]),
])
def test_whole_model_same_loss_and_gradients_either_impl(name, fields, impl):
  # The straightforward model (XLA's convolution gradients) and `impl`'s, same parameters and
  # batch: the loss and every parameter gradient agree to float32 summation order.
  shape = (16, 16, 1)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4,) + shape)
  rngs = {'reparam': jax.random.PRNGKey(1)}
  grads, hlo = {}, {}
  for path in ('xla', impl):
    model = models.build({'name': name, 'conv_impl': path, **fields}, shape, num_classes=3)
    variables = jax.jit(model.init)({'params': jax.random.PRNGKey(2), **rngs}, x)

    def loss(params):
      out = model.apply({**variables, 'params': params}, x, train=True, rngs=rngs,
                        mutable=['batch_stats'])[0]
      return sum(jnp.sum(jnp.sin(v)) for v in jax.tree.leaves(out))

    step = jax.jit(jax.value_and_grad(loss))
    hlo[path] = step.lower(variables['params']).as_text()
    grads[path] = step(variables['params'])
  # Each path ran what it names: oneDNN's custom calls, or none.
  assert ('SegaeOnednn' in hlo[impl]) == (impl == 'onednn') and 'SegaeOnednn' not in hlo['xla']
  np.testing.assert_allclose(grads[impl][0], grads['xla'][0], rtol=1e-5)
  flat_ref = jax.tree.leaves_with_path(grads['xla'][1])
  flat_new = jax.tree.leaves(grads[impl][1])
  assert len(flat_ref) == len(flat_new)
  for (path, ref), new in zip(flat_ref, flat_new):
    np.testing.assert_allclose(new, ref, rtol=2e-4, atol=2e-5 * float(jnp.max(jnp.abs(ref))),
                               err_msg=jax.tree_util.keystr(path))
