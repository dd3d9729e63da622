"""Evaluation metrics: reconstruction quality (MSE, PSNR) and the VAE's negative ELBO.

All functions take the model's outputs dict and a batch (see segae_jax.losses) and return
{name: scalar}, each the mean over the batch's real examples (batch['valid']).
"""
from typing import Dict, Mapping

import jax
import jax.numpy as jnp

from segae_jax import losses


def psnr(reconstruction: jnp.ndarray, image: jnp.ndarray, max_value: float = 1.0) -> jnp.ndarray:
  """Peak signal-to-noise ratio per image in dB: [batch, h, w, c] x2 -> [batch].

  10 * log10(max_value^2 / MSE), with MSE the mean over the image's pixels and channels; a
  perfect reconstruction is capped at MSE = 1e-10 (100 dB for max_value 1).
  """
  mse = jnp.mean(jnp.square(reconstruction - image).reshape((image.shape[0], -1)), axis=-1)
  return 10.0 * jnp.log10(max_value ** 2 / jnp.maximum(mse, 1e-10))


def reconstruction_metrics(outputs: Mapping[str, jnp.ndarray],
                           batch: Mapping[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
  """rec_bce and rec_mse (nats / squared error summed over pixels) against the model's target
  batch['image']; pixel_mse and psnr (dB) against batch['clean_image'] when the pipeline
  binarised the input (the grayscale image), else against batch['image']; for
  models with a posterior ('mean', 'logvar') also kl and neg_elbo = rec_bce + kl (nats per image,
  the single-sample estimate of -ELBO under the Bernoulli likelihood; Kingma & Welling 2014, Eq. 10).
  """
  recon = jax.nn.sigmoid(outputs['rec_logits'])
  image = batch.get('clean_image', batch['image'])
  out = {}
  out['rec_bce'], _ = losses.rec_bce(outputs, batch)
  out['rec_mse'], _ = losses.rec_mse(outputs, batch)
  pixel_mse = jnp.mean(jnp.square(recon - image).reshape((image.shape[0], -1)), axis=-1)
  out['pixel_mse'] = losses.batch_mean(pixel_mse, batch)
  out['psnr'] = losses.batch_mean(psnr(recon, image), batch)
  if 'mean' in outputs and 'logvar' in outputs:
    out['kl'], _ = losses.kl(outputs, batch)
    out['neg_elbo'] = out['rec_bce'] + out['kl']
  return out
