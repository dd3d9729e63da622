"""Reconstruction, KL and sparsity terms (per-image values in nats; see losses.base)."""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from segae_jax.batch import example_axes, pixels_shape
from segae_jax.losses.base import (LOSSES, Metrics, batch_mean, mean_per_example,
                                   reconstruction_target, sum_per_example)


def gaussian_kl(mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats: [batch, ...] -> [batch].

  Analytic form from Kingma & Welling (2014), Appendix B:
  -1/2 * sum_j (1 + logvar_j - mean_j^2 - exp(logvar_j)), summed over every latent dimension
  (a vector latent [batch, latent] or a spatial one [batch, h, w, channels]).
  """
  return sum_per_example(-0.5 * (1.0 + logvar - jnp.square(mean) - jnp.exp(logvar)))


def pixel_weights(batch) -> Optional[jnp.ndarray]:
  """The weights of reconstruction pixels, float32 [batch, height, width, 1], or None (every pixel
  counts): batch['target_weight'] (e.g. a masked objective's mask, 1 = hidden pixel) where an
  image has any weight, and 1 on every pixel of an image whose weights are all 0 (a mask that
  hides nothing leaves a plain reconstruction)."""
  weights = batch.get('target_weight')
  if weights is None:
    return None
  weights = weights.astype(jnp.float32).reshape(pixels_shape(weights) + (1,))
  any_weight = jnp.any(weights > 0, axis=example_axes(weights), keepdims=True)
  return jnp.where(any_weight, weights, 1.0)


def _summed(per_pixel: jnp.ndarray, batch) -> jnp.ndarray:
  """Per-image sums of a [batch, h, w, c] array over the weighted pixels (all without weights)."""
  weights = pixel_weights(batch)
  return sum_per_example(per_pixel if weights is None else per_pixel * weights)


@LOSSES.register('rec_bce')
def rec_bce(outputs, batch, axis_name: Optional[str] = None) -> Tuple[jnp.ndarray, Metrics]:
  """Bernoulli negative log-likelihood -log p(x|z): sigmoid cross-entropy summed over pixels (nats);
  x is losses.base.reconstruction_target(batch), the pixels those of pixel_weights(batch)."""
  per_pixel = optax.sigmoid_binary_cross_entropy(outputs['rec_logits'],
                                                 reconstruction_target(batch))
  value = batch_mean(_summed(per_pixel, batch), batch, axis_name)
  return value, {'rec_bce': value}


@LOSSES.register('rec_mse')
def rec_mse(outputs, batch, axis_name: Optional[str] = None) -> Tuple[jnp.ndarray, Metrics]:
  """Squared error of sigmoid(rec_logits) against the reconstruction target, summed over the
  (weighted) pixels per image."""
  recon = jax.nn.sigmoid(outputs['rec_logits'])
  per_pixel = optax.squared_error(recon, reconstruction_target(batch))
  value = batch_mean(_summed(per_pixel, batch), batch, axis_name)
  return value, {'rec_mse': value}


@LOSSES.register('rec_mse_per_pixel')
def rec_mse_per_pixel(outputs, batch,
                      axis_name: Optional[str] = None) -> Tuple[jnp.ndarray, Metrics]:
  """Mean squared error of sigmoid(rec_logits) per pixel and channel (rec_mse / pixel count):
  on the scale of per-pixel segmentation losses, for the alpha-weighted joint objective. With
  pixel weights (a masked objective) the mean over each image's weighted pixels: the hidden ones
  alone carry the loss (MAE, He et al., CVPR 2022, Sec. 3)."""
  recon = jax.nn.sigmoid(outputs['rec_logits'])
  squared = optax.squared_error(recon, reconstruction_target(batch))
  weights = pixel_weights(batch)
  if weights is None:
    per_image = mean_per_example(squared)
  else:
    per_image = (sum_per_example(squared * weights)
                 / (sum_per_example(weights) * recon.shape[-1]))
  value = batch_mean(per_image, batch, axis_name)
  return value, {'rec_mse_per_pixel': value}


def noise_mse(outputs, batch, axis_name: Optional[str] = None) -> Tuple[jnp.ndarray, Metrics]:
  """Denoising with a noise target: mean squared error per pixel and channel between the raw
  rec_logits (no sigmoid) and the noise epsilon in batch['target'], float32 [batch, h, w, c]
  (Brempong et al., "Denoising Pretraining for Semantic Segmentation", CVPR-W 2022, Sec. 3:
  predict the noise added to x~ = (x + sigma * eps) / sqrt(1 + sigma^2)). Not a config.loss term:
  the 'denoising' objective adds it for the images it noised."""
  error = optax.squared_error(outputs['rec_logits'], batch['target'])
  value = batch_mean(mean_per_example(error), batch, axis_name)
  return value, {'noise_mse': value}


@LOSSES.register('kl_per_pixel')
def kl_per_pixel(outputs, batch,
                 axis_name: Optional[str] = None) -> Tuple[jnp.ndarray, Metrics]:
  """The analytic KL divided by the image's pixel count (height * width * channels): nats per
  pixel, on the scale of the per-pixel reconstruction and segmentation terms."""
  pixels = jnp.size(batch['image'][0])
  value = batch_mean(gaussian_kl(outputs['mean'], outputs['logvar']), batch, axis_name) / pixels
  return value, {'kl_per_pixel': value}


@LOSSES.register('kl')
def kl(outputs, batch, axis_name: Optional[str] = None) -> Tuple[jnp.ndarray, Metrics]:
  """Analytic Gaussian KL of q(z|x) from the N(0, I) prior, nats per image."""
  value = batch_mean(gaussian_kl(outputs['mean'], outputs['logvar']), batch, axis_name)
  return value, {'kl': value}


@LOSSES.register('sparsity_l1')
def sparsity_l1(outputs, batch,
                axis_name: Optional[str] = None) -> Tuple[jnp.ndarray, Metrics]:
  """L1 norm of the code z, summed over latent units, mean over images."""
  value = batch_mean(jnp.sum(jnp.abs(outputs['z']), axis=-1), batch, axis_name)
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
