import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segae_jax import models
from segae_jax.errors import UserInputError

SHAPE = (28, 28, 1)


def _init(model, batch=3):
  x = jnp.linspace(0, 1, batch * 28 * 28).reshape((batch,) + SHAPE)
  key = jax.random.PRNGKey(0)
  variables = model.init({'params': key, 'reparam': key}, x)
  return variables, x


@pytest.mark.parametrize('name', ['ae', 'sparse_ae', 'vae'])
def test_output_shapes(name):
  model = models.build({'name': name, 'latent_dim': 16, 'features': (8, 16), 'hidden_dim': 32},
                       SHAPE)
  variables, x = _init(model)
  out = model.apply(variables, x, rngs={'reparam': jax.random.PRNGKey(1)})
  assert out['rec_logits'].shape == (3, 28, 28, 1)
  assert out['z'].shape == (3, 16)
  if name == 'vae':
    assert out['mean'].shape == out['logvar'].shape == (3, 16)
  if name == 'sparse_ae':  # Sigmoid code for the KL sparsity penalty.
    assert float(out['z'].min()) > 0 and float(out['z'].max()) < 1


def test_encoder_decoder_layer_shapes_follow_reference_spec():
  """features (32, 64): 28 -> 14 -> 7 -> flatten 3136 -> 256 -> 2*32, and back (shared/bench)."""
  model = models.build({'name': 'vae', 'latent_dim': 32, 'features': (32, 64), 'hidden_dim': 256},
                       SHAPE)
  variables, _ = _init(model)
  p = variables['params']
  assert p['encoder']['conv0']['kernel'].shape == (3, 3, 1, 32)
  assert p['encoder']['conv1']['kernel'].shape == (3, 3, 32, 64)
  assert p['encoder']['hidden']['kernel'].shape == (7 * 7 * 64, 256)
  assert p['encoder']['out']['kernel'].shape == (256, 64)
  assert p['decoder']['project']['kernel'].shape == (256, 7 * 7 * 64)
  assert p['decoder']['deconv0']['kernel'].shape == (3, 3, 64, 32)
  assert p['decoder']['out']['kernel'].shape == (3, 3, 32, 1)


def test_vae_sample_decode_and_reparameterisation():
  model = models.build({'name': 'vae', 'latent_dim': 8, 'features': (8, 16), 'hidden_dim': 32},
                       SHAPE)
  variables, x = _init(model)
  samples = model.apply(variables, jax.random.PRNGKey(3), 5, method=models.VAE.sample)
  assert samples.shape == (5, 28, 28, 1)
  assert float(samples.min()) >= 0 and float(samples.max()) <= 1
  logits = model.apply(variables, jnp.zeros((2, 8)), method=models.VAE.decode)
  assert logits.shape == (2, 28, 28, 1)
  # Same key -> same z; another key -> another z (the key is explicit, not hidden state).
  a = model.apply(variables, x, rngs={'reparam': jax.random.PRNGKey(7)})['z']
  b = model.apply(variables, x, rngs={'reparam': jax.random.PRNGKey(7)})['z']
  c = model.apply(variables, x, rngs={'reparam': jax.random.PRNGKey(8)})['z']
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_reparameterize_moments():
  mean = jnp.full((200_000, 2), jnp.array([1.5, -2.0]))
  logvar = jnp.full((200_000, 2), jnp.log(jnp.array([0.25, 4.0])))
  z = models.reparameterize(jax.random.PRNGKey(0), mean, logvar)
  np.testing.assert_allclose(z.mean(0), [1.5, -2.0], atol=0.02)
  np.testing.assert_allclose(z.std(0), [0.5, 2.0], rtol=0.01)


def test_bad_model_config_errors():
  with pytest.raises(UserInputError, match="unknown model 'vea'; known: ae, segae, segnet, sparse_ae, unet, unet_ae, vae, vae_unet"):
    models.build({'name': 'vea'}, SHAPE)
  with pytest.raises(UserInputError, match='has no field'):
    models.build({'name': 'ae', 'code_activation': 'relu'}, SHAPE)
  model = models.build({'name': 'ae', 'features': (8, 16, 32)}, SHAPE)
  with pytest.raises(UserInputError, match='28x28 is not divisible by 8'):
    _init(model)


@pytest.mark.parametrize('name,outputs', [('ae', 16), ('sparse_ae', 16), ('vae', 32)])
def test_encoder_outputs_is_the_encoders_output_width(name, outputs):
  model = models.build({'name': name, 'latent_dim': 16, 'features': (8, 16), 'hidden_dim': 32},
                       SHAPE)
  assert model.encoder_outputs() == outputs
  variables, _ = _init(model)
  assert variables['params']['encoder']['out']['kernel'].shape == (32, outputs)
