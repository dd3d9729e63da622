"""Variational autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014).

The encoder outputs the mean and log-variance of a diagonal Gaussian q(z|x); z is drawn with the
reparameterisation trick (Sec. 2.4) from an explicit PRNG key, passed to `apply` as
`rngs={'reparam': key}`. The prior is N(0, I); the decoder gives Bernoulli logits per pixel.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from segae_jax.models.autoencoder import Autoencoder
from segae_jax.models.registry import MODELS


def reparameterize(key: jax.Array, mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I); all arrays [batch, latent_dim] float."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


@MODELS.register('vae')
class VAE(Autoencoder):
  """Convolutional VAE; same attributes as Autoencoder.

  Outputs of `__call__`: 'mean', 'logvar' ([batch, latent_dim]), 'z' (the sample),
  'rec_logits' ([batch, height, width, channels]).
  """

  def encoder_outputs(self) -> int:
    """Size of the encoder's output vector: the mean and the log-variance, 2 * latent_dim."""
    return 2 * self.latent_dim

  def encode_distribution(self, x: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Images [batch, h, w, c] in [0, 1] -> (mean, log-variance), each [batch, latent_dim]."""
    mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
    return mean, logvar

  def encode(self, x: jnp.ndarray) -> jnp.ndarray:
    """The posterior mean, the deterministic code used by downstream tools."""
    return self.encode_distribution(x)[0]

  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    del train
    mean, logvar = self.encode_distribution(x)
    z = reparameterize(self.make_rng('reparam'), mean, logvar)
    return {'mean': mean, 'logvar': logvar, 'z': z, 'rec_logits': self.decode(z)}

  def sample(self, key: jax.Array, num_samples: int) -> jnp.ndarray:
    """Draws z ~ N(0, I) and decodes: images [num_samples, h, w, c], Bernoulli means in [0, 1]."""
    z = jax.random.normal(key, (num_samples, self.latent_dim))
    return jax.nn.sigmoid(self.decode(z))
