"""The benchmark's reference models are the networks ../shared/bench/README.md specifies: the
PyTorch reference's parameters counted by hand, batch sizes, losses and optimiser settings."""
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import run
from segae_jax import models


def _count(config, shape):
  model = models.build(config.model, shape, num_classes=11)
  x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init({'params': jax.random.PRNGKey(0),
                                                   'reparam': jax.random.PRNGKey(1)}, x), x)
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def test_vae_fmnist_is_the_reference_network():
  config = run.reference_config('vae_fmnist')
  conv = lambda cin, cout: 9 * cin * cout + cout
  dense = lambda nin, nout: nin * nout + nout
  expected = (conv(1, 32) + conv(32, 64) + dense(3136, 256) + dense(256, 64)      # encoder
              + dense(32, 256) + dense(256, 3136) + conv(64, 32) + conv(32, 1))  # decoder
  assert expected == 1_671_489
  assert _count(config, (28, 28, 1)) == expected
  assert (config.batch_size, config.learning_rate, config.optimizer) == (256, 1e-3, 'adam')
  assert dict(config.loss) == {'rec_bce': 1.0, 'kl': 1.0} and config.model.latent_dim == 32


def test_unet64_is_the_reference_network():
  config = run.reference_config('unet64')
  assert _count(config, (64, 64, 1)) == 1_926_763  # Hand count in test_seg_models.
  assert (config.batch_size, config.learning_rate, config.model.norm) == (32, 1e-3, 'batch')
  assert tuple(config.model.features) == (32, 64, 128, 256) and dict(config.loss) == {'seg_ce': 1.0}


def test_profile_categories_name_the_convolutions_of_a_step():
  # The step profile assigns XLA ops to categories from the optimized HLO: a convolution's
  # forward and input gradient, and the matmul kernel gradient as dots.
  from benchmarks import profile_convs
  from segae_jax.models import conv_ops
  x = jnp.ones((2, 8, 8, 16))
  w = jnp.ones((3, 3, 16, 16))
  loss = lambda x, w: jnp.sum(conv_ops.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  found = {category for category, _ in profile_convs.op_categories(hlo).values()}
  assert {'convolution forward', 'convolution input gradient',
          'dot (dense layers, matmul kernel gradients)'} <= found, found
