"""Classifier heads on an autoencoder's code (tools/probe): logits float [batch, num_classes].

Not in the model registry: models.build constructs whole models from config.model (with an
image_shape), while a head is built around an already trained run's encoder.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from segae_jax.models.autoencoder import CODE_ACTIVATIONS
from segae_jax.models.layers import ConvEncoder


class LinearHead(nn.Module):
  """Dropout then Dense(num_classes): codes float [batch, dim] -> logits [batch, num_classes]."""
  num_classes: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, code: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    code = nn.Dropout(self.dropout, deterministic=not train)(code)
    return nn.Dense(self.num_classes, name='head')(code)


class EncoderClassifier(nn.Module):
  """The autoencoder's ConvEncoder, its code, and a LinearHead.

  The encoder submodule is named 'encoder' with the Autoencoder's field values, so its
  parameters have the tree of an AE/VAE's params['encoder'] and can be copied from a trained run.

  Attributes:
    features, hidden_dim, activation: the run's config.model fields.
    encoder_outputs: the encoder's output size (latent_dim; 2 * latent_dim for a VAE).
    latent_dim: the code is the encoder output's first latent_dim entries (the VAE's mean).
    code_activation: 'linear', or the sparse AE's code nonlinearity.
    num_classes, dropout: the head.
  """
  features: Sequence[int]
  hidden_dim: int
  encoder_outputs: int
  latent_dim: int
  num_classes: int
  activation: str = 'relu'
  code_activation: str = 'linear'
  dropout: float = 0.0

  def setup(self):
    self.encoder = ConvEncoder(tuple(self.features), self.hidden_dim, self.encoder_outputs,
                               self.activation)
    self._code_activation = CODE_ACTIVATIONS[self.code_activation]
    self.classifier = LinearHead(self.num_classes, self.dropout)

  def code(self, x: jnp.ndarray) -> jnp.ndarray:
    """Images float [batch, h, w, c] in [0, 1] -> code float [batch, latent_dim]."""
    return self._code_activation(self.encoder(x)[:, :self.latent_dim])

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Images float [batch, h, w, c] in [0, 1] -> logits float [batch, num_classes]."""
    return self.classifier(self.code(x), train)
