"""Loss values against hand-computed numpy."""
import jax.numpy as jnp
import numpy as np
import pytest

from segae_jax import losses
from segae_jax.training import metrics
from segae_jax.errors import UserInputError

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(4, 5, 5, 1)).astype(np.float32)
IMAGE = RNG.uniform(size=(4, 5, 5, 1)).astype(np.float32)
MEAN = RNG.normal(size=(4, 3)).astype(np.float32)
LOGVAR = RNG.normal(size=(4, 3)).astype(np.float32) * 0.5
OUTPUTS = {'rec_logits': jnp.asarray(LOGITS), 'mean': jnp.asarray(MEAN),
           'logvar': jnp.asarray(LOGVAR), 'z': jnp.asarray(MEAN)}
BATCH = {'image': jnp.asarray(IMAGE)}


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_rec_bce_matches_numpy():
  p = _sigmoid(LOGITS.astype(np.float64))
  nll = -(IMAGE * np.log(p) + (1 - IMAGE) * np.log(1 - p))
  expected = nll.reshape(4, -1).sum(1).mean()
  value, m = losses.rec_bce(OUTPUTS, BATCH)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert m == {'rec_bce': value}


def test_rec_bce_single_pixel_by_hand():
  # logit 0 -> p = 0.5: -log(0.5) = 0.693147 nats whatever the target.
  value, _ = losses.rec_bce({'rec_logits': jnp.zeros((1, 1, 1, 1))},
                            {'image': jnp.full((1, 1, 1, 1), 0.3)})
  np.testing.assert_allclose(value, 0.6931472, rtol=1e-6)


def test_rec_mse_matches_numpy():
  expected = ((_sigmoid(LOGITS) - IMAGE) ** 2).reshape(4, -1).sum(1).mean()
  np.testing.assert_allclose(losses.rec_mse(OUTPUTS, BATCH)[0], expected, rtol=1e-5)


def test_kl_by_hand_and_against_monte_carlo():
  # mean 1, variance 1 in each of 2 dims: KL = 2 * 0.5 * 1^2 = 1 nat.
  value, _ = losses.kl({'mean': jnp.ones((1, 2)), 'logvar': jnp.zeros((1, 2))}, {})
  np.testing.assert_allclose(value, 1.0, rtol=1e-6)
  # Monte-Carlo: E_q[log q(z) - log p(z)] with 400k samples per example.
  rng = np.random.default_rng(1)
  std = np.exp(0.5 * LOGVAR)
  z = MEAN[None] + std[None] * rng.normal(size=(400_000,) + MEAN.shape)
  log_q = -0.5 * (((z - MEAN) / std) ** 2 + LOGVAR + np.log(2 * np.pi))
  log_p = -0.5 * (z ** 2 + np.log(2 * np.pi))
  mc = (log_q - log_p).sum(-1).mean(0)  # [batch]
  np.testing.assert_allclose(losses.gaussian_kl(MEAN, LOGVAR), mc, atol=0.01)


def test_sparsity_terms_by_hand():
  z = jnp.array([[0.1, 0.0], [0.3, 0.2]])
  l1, _ = losses.sparsity_l1({'z': z}, {})
  np.testing.assert_allclose(l1, (0.1 + 0.5) / 2, rtol=1e-6)
  rho, target = np.array([0.2, 0.1]), 0.05
  expected = np.sum(target * np.log(target / rho) + (1 - target) * np.log((1 - target) / (1 - rho)))
  value, _ = losses.sparsity_kl({'z': z}, {}, target=target)
  np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_valid_excludes_padding():
  valid = jnp.array([1.0, 1.0, 0.0, 0.0])
  value, _ = losses.rec_bce(OUTPUTS, {'image': BATCH['image'], 'valid': valid})
  first_two, _ = losses.rec_bce({'rec_logits': OUTPUTS['rec_logits'][:2]},
                                {'image': BATCH['image'][:2]})
  np.testing.assert_allclose(value, first_two, rtol=1e-6)


def test_make_loss_fn_weights_terms():
  loss_fn = losses.make_loss_fn({'rec_bce': 1.0, 'kl': 4.0, 'rec_mse': 0.0})
  total, m = loss_fn(OUTPUTS, BATCH)
  bce, _ = losses.rec_bce(OUTPUTS, BATCH)
  kl, _ = losses.kl(OUTPUTS, BATCH)
  np.testing.assert_allclose(total, bce + 4.0 * kl, rtol=1e-6)
  assert set(m) == {'rec_bce', 'kl', 'loss'}  # Zero-weight terms are not computed.
  # The negative ELBO metric is rec_bce + KL (beta = 1).
  np.testing.assert_allclose(metrics.reconstruction_metrics(OUTPUTS, BATCH)['neg_elbo'],
                             bce + kl, rtol=1e-6)


def test_loss_params_reach_their_term():
  loss_fn = losses.make_loss_fn({'sparsity_kl': 1.0}, {'sparsity_kl': {'target': 0.2}})
  z = jnp.full((2, 3), 0.2)
  np.testing.assert_allclose(loss_fn({'z': z}, {})[0], 0.0, atol=1e-6)


def test_alpha_and_beta_config_references():
  from configs import default, sparse_ae_fashion_mnist
  config = sparse_ae_fashion_mnist.get_config()
  config.alpha = 0.75
  assert (config.loss.rec_mse, config.loss.sparsity_kl) == (0.75, 0.25)
  assert losses.alpha_weights(0.75, 'rec_mse', 'sparsity_kl') == dict(config.loss)
  config = default.get_config()
  config.beta = 4.0
  assert dict(config.loss) == losses.beta_vae_weights(4.0) == {'rec_bce': 1.0, 'kl': 4.0}


def test_bad_loss_configs():
  known = ('balanced_ce, class_ce, class_focal, dice, focal, kl, kl_per_pixel, rec_bce, rec_mse, '
           'rec_mse_per_pixel, seg_ce, sparsity_kl, sparsity_l1')
  with pytest.raises(UserInputError, match=f"unknown loss 'kll'; known: {known}$"):
    losses.make_loss_fn({'kll': 1.0})
  with pytest.raises(UserInputError, match='every weight is zero'):
    losses.make_loss_fn({'rec_bce': 0.0, 'kl': 0.0})
  with pytest.raises(UserInputError, match='config.loss_params.kl'):
    losses.make_loss_fn({'rec_bce': 1.0}, {'kl': {'x': 1}})


def test_psnr_by_hand():
  # MSE 0.01 against max 1 -> 20 dB.
  a = np.zeros((1, 2, 2, 1), np.float32)
  np.testing.assert_allclose(metrics.psnr(a + 0.1, a), 20.0, rtol=1e-5)


def test_pixel_metrics_use_clean_image_when_input_was_binarised():
  logits = jnp.zeros((1, 2, 2, 1))  # sigmoid -> 0.5 everywhere.
  binary = jnp.array([[[[1.0], [0.0]], [[1.0], [0.0]]]])
  clean = jnp.full((1, 2, 2, 1), 0.4)
  m = metrics.reconstruction_metrics({'rec_logits': logits}, {'image': binary, 'clean_image': clean})
  np.testing.assert_allclose(m['pixel_mse'], 0.01, rtol=1e-5)  # (0.5 - 0.4)^2.
  np.testing.assert_allclose(m['psnr'], 20.0, rtol=1e-5)
  np.testing.assert_allclose(m['rec_bce'], 4 * 0.6931472, rtol=1e-6)  # Against the binary target.
