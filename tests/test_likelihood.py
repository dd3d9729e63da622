"""The VAE's importance-sampled log-likelihood bound (segae_jax.tools.likelihood)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from segae_jax import training
from segae_jax.errors import UserInputError
from segae_jax.tools import evaluate, likelihood

SHAPE = (28, 28, 1)


def _vae():
  config = default.get_config()
  model = training.build_model(config, SHAPE)
  variables = model.init({'params': jax.random.PRNGKey(0), 'reparam': jax.random.PRNGKey(1)},
                         jnp.zeros((1,) + SHAPE))
  return model, {'params': variables['params']}


def _images(n=3):
  return (np.random.default_rng(0).random((n,) + SHAPE) > 0.5).astype(np.float32)


def test_posterior_equal_to_the_prior_gives_the_exact_likelihood_by_hand():
  """q(z|x) = N(0, I) = p(z) (the encoder's output layer zeroed) and a decoder that ignores z
  (its first layer's kernel zeroed): every importance weight is p(x|z) = p(x), so -L_K is
  -log p(x) exactly, the Bernoulli NLL of the decoder's constant logits, for any K."""
  model, variables = _vae()
  params = flax.traverse_util.flatten_dict(variables['params'])
  for path in params:
    if path[:2] == ('encoder', 'out') or path[:3] == ('decoder', 'hidden', 'kernel'):
      params[path] = jnp.zeros_like(params[path])
  variables = {'params': flax.traverse_util.unflatten_dict(params)}
  x = _images()
  logits = np.asarray(model.apply(variables, jnp.zeros((1, model.latent_dim)),
                                  method=model.decode), np.float64)[0]
  exact = np.sum(np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits))),
                 axis=(1, 2, 3))
  for k in (1, 7):
    np.testing.assert_allclose(likelihood.iwae_nll(model, variables, x, x, jax.random.PRNGKey(k),
                                                   k, chunk=3), exact, rtol=1e-5)


def test_the_bound_tightens_with_k_and_is_the_elbo_at_one_sample():
  model, variables = _vae()
  # A posterior variance well away from 1 (log-variance -1), so log q(z|x) is not log p(z).
  params = flax.traverse_util.flatten_dict(variables['params'])
  bias = params[('encoder', 'out', 'bias')]
  params[('encoder', 'out', 'bias')] = bias.at[model.latent_dim:].set(-1.0)
  variables = {'params': flax.traverse_util.unflatten_dict(params)}
  x = _images(2)
  # 200 single-sample bounds (K = 1) at once: -log w of 200 draws.
  draws = -np.asarray(likelihood.log_weights(model, variables, x, x, jax.random.PRNGKey(0), 200),
                      np.float64)
  single, spread = draws.mean(0), draws.std(0) / np.sqrt(len(draws))

  # -ELBO with the analytic KL (the training loss), written here, over 200 other z draws (each
  # image repeated 200 times in one batch: one z per row).
  repeated = np.repeat(x[None], 200, axis=0).reshape((-1,) + SHAPE)
  out = model.apply(variables, repeated, rngs={'reparam': jax.random.PRNGKey(1)})
  logits = out['rec_logits']
  rec = jnp.sum(jax.nn.softplus(logits) - logits * repeated, axis=(1, 2, 3))
  kl = 0.5 * jnp.sum(jnp.exp(out['logvar']) + out['mean'] ** 2 - 1 - out['logvar'], axis=-1)
  elbo = np.asarray(rec + kl, np.float64).reshape(200, len(x)).mean(0)
  assert np.all(np.abs(single - elbo) < 4 * spread + 0.5), (single, elbo, spread)
  many = likelihood.iwae_nll(model, variables, x, x, jax.random.PRNGKey(0), 500, chunk=128)
  assert np.all(many < single - 2 * spread), (many, single)


def test_bad_sample_counts_and_models_are_refused():
  model, _ = _vae()
  with pytest.raises(UserInputError, match=r'--iw_samples=0: expected a number of samples >= 1'):
    likelihood.check(model, 0)
  from configs import unet_scenes
  unet = training.build_model(unet_scenes.get_config(), SHAPE, 3)
  with pytest.raises(UserInputError, match='has no posterior q'):
    likelihood.check(unet, 10)


def test_evaluate_reports_the_bound_beside_the_elbo(tiny_vae_run):
  workdir, _ = tiny_vae_run
  evaluated = evaluate.evaluate_run(workdir, checkpoint='latest', iw_samples=64, iw_images=40)
  metrics = evaluated['metrics']
  assert metrics['iw_samples'] == 64 and metrics['images'] == 40
  # -ELBO of the same 40 images, and of the whole split ('loss': rec_bce + kl, weights 1): the
  # bound lies below both.
  assert metrics['iwae_nll'] < metrics['elbo_nll'], metrics
  assert metrics['iwae_nll'] < metrics['loss'], metrics
