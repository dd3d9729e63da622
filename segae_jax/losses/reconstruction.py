"""Reconstruction, KL and sparsity terms (per-image values in nats; see losses.base)."""
from typing import Tuple

import jax
import jax.numpy as jnp
import optax

from segae_jax.losses.base import LOSSES, Metrics, batch_mean, sum_per_example


def gaussian_kl(mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats: [batch, ...] -> [batch].

  Analytic form from Kingma & Welling (2014), Appendix B:
  -1/2 * sum_j (1 + logvar_j - mean_j^2 - exp(logvar_j)), summed over every latent dimension
  (a vector latent [batch, latent] or a spatial one [batch, h, w, channels]).
  """
  return sum_per_example(-0.5 * (1.0 + logvar - jnp.square(mean) - jnp.exp(logvar)))


@LOSSES.register('rec_bce')
def rec_bce(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Bernoulli negative log-likelihood -log p(x|z): sigmoid cross-entropy summed over pixels (nats)."""
  per_pixel = optax.sigmoid_binary_cross_entropy(outputs['rec_logits'], batch['image'])
  value = batch_mean(sum_per_example(per_pixel), batch)
  return value, {'rec_bce': value}


@LOSSES.register('rec_mse')
def rec_mse(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Squared error of sigmoid(rec_logits) against the image, summed over pixels per image."""
  recon = jax.nn.sigmoid(outputs['rec_logits'])
  value = batch_mean(sum_per_example(optax.squared_error(recon, batch['image'])), batch)
  return value, {'rec_mse': value}


@LOSSES.register('rec_mse_per_pixel')
def rec_mse_per_pixel(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Mean squared error of sigmoid(rec_logits) per pixel and channel (rec_mse / pixel count):
  on the scale of per-pixel segmentation losses, for the alpha-weighted joint objective."""
  recon = jax.nn.sigmoid(outputs['rec_logits'])
  per_image = jnp.mean(optax.squared_error(recon, batch['image']).reshape((recon.shape[0], -1)),
                       axis=-1)
  value = batch_mean(per_image, batch)
  return value, {'rec_mse_per_pixel': value}


@LOSSES.register('kl_per_pixel')
def kl_per_pixel(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """The analytic KL divided by the image's pixel count (height * width * channels): nats per
  pixel, on the scale of the per-pixel reconstruction and segmentation terms."""
  pixels = jnp.size(batch['image'][0])
  value = batch_mean(gaussian_kl(outputs['mean'], outputs['logvar']), batch) / pixels
  return value, {'kl_per_pixel': value}


@LOSSES.register('kl')
def kl(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Analytic Gaussian KL of q(z|x) from the N(0, I) prior, nats per image."""
  value = batch_mean(gaussian_kl(outputs['mean'], outputs['logvar']), batch)
  return value, {'kl': value}


@LOSSES.register('sparsity_l1')
def sparsity_l1(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """L1 norm of the code z, summed over latent units, mean over images."""
  value = batch_mean(jnp.sum(jnp.abs(outputs['z']), axis=-1), batch)
  return value, {'sparsity_l1': value}


@LOSSES.register('sparsity_kl')
def sparsity_kl(outputs, batch, target: float = 0.05) -> Tuple[jnp.ndarray, Metrics]:
  """KL sparsity penalty sum_j KL(Bernoulli(target) || Bernoulli(rho_j)), nats.

  rho_j is unit j's mean activation over the (real examples of the) batch, so the code must lie in
  (0, 1): use a sigmoid code (SparseAutoencoder, code_activation='sigmoid'). Source: A. Ng,
  "Sparse autoencoder", CS294A lecture notes (2011), Sec. 3. Under pmap rho_j is each device's
  batch mean.
  """
  z = outputs['z']
  valid = batch.get('valid')
  if valid is None:
    rho = jnp.mean(z, axis=0)
  else:
    rho = jnp.sum(z * valid[:, None], axis=0) / jnp.maximum(jnp.sum(valid), 1.0)
  rho = jnp.clip(rho, 1e-6, 1.0 - 1e-6)
  value = jnp.sum(target * jnp.log(target / rho)
                  + (1.0 - target) * jnp.log((1.0 - target) / (1.0 - rho)))
  return value, {'sparsity_kl': value}
