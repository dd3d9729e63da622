"""Deterministic autoencoders: plain and sparse.

Every model in segae_jax returns a dict of outputs, so losses can pick what they need:
  'rec_logits': [batch, height, width, channels] reconstruction logits; the reconstructed image in
                [0, 1] is sigmoid(rec_logits).
  'z':          [batch, latent_dim] the code.
"""
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from segae_jax.errors import UserInputError
from segae_jax.models.layers import ConvDecoder, ConvEncoder, Layers, check_divisible
from segae_jax.models.registry import MODELS

CODE_ACTIVATIONS = {'linear': lambda x: x, 'relu': nn.relu, 'sigmoid': nn.sigmoid}


@MODELS.register('ae')
class Autoencoder(nn.Module):
  """Convolutional autoencoder x -> z -> x_hat.

  `encode(images) -> z` and `decode(z) -> rec_logits` work on the vector code (the latent tools
  use them); the segmenting models' encode -> (features, skips) interface is
  segae_jax.models.layers.SegmentationModel's.

  Attributes:
    image_shape: (height, width, channels); height and width divisible by 2**len(features).
    latent_dim: size of the code z.
    features: channels of the encoder's stride-2 convolutions.
    hidden_dim: dense width between the convolutions and the code.
    activation: hidden-layer nonlinearity.
    conv_impl: 'auto' | 'xla' | 'matmul_grad', how convolution gradients are computed
      (segae_jax.models.conv_ops); results are the same.
    dtype: computation dtype (config.compute_dtype); parameters stay float32. None: float32.
  """
  # Whether the model outputs 'rec_logits' (a class attribute, not a field; VAE inherits it).
  reconstructs: ClassVar[bool] = True
  image_shape: Tuple[int, int, int]
  latent_dim: int = 32
  features: Sequence[int] = (32, 64)
  hidden_dim: int = 256
  activation: str = 'relu'
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  def setup(self):
    check_divisible(self.image_shape, len(self.features))
    layers = Layers(conv_impl=self.conv_impl, dtype=self.dtype)  # No normalisation layers.
    self.encoder = ConvEncoder(self.features, self.hidden_dim, self.encoder_outputs(),
                               self.activation, layers)
    self.decoder = ConvDecoder(self.features, self.hidden_dim, tuple(self.image_shape),
                               self.activation, layers)

  def encoder_outputs(self) -> int:
    """Size of the encoder's output vector: latent_dim (a VAE's is 2 * latent_dim)."""
    return self.latent_dim

  def encode(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, height, width, channels] in [0, 1] -> code [batch, latent_dim]."""
    return self.encoder(x)

  def decode(self, z: jnp.ndarray) -> jnp.ndarray:
    """Code [batch, latent_dim] -> reconstruction logits [batch, height, width, channels]."""
    return self.decoder(z)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    del train  # No dropout or normalisation statistics in this model.
    z = self.encode(x)
    return {'z': z, 'rec_logits': self.decode(z)}


@MODELS.register('sparse_ae')
class SparseAutoencoder(Autoencoder):
  """Autoencoder whose code passes through `code_activation` so a sparsity penalty can act on it.

  Pair `code_activation='sigmoid'` with the KL sparsity loss (activations must lie in (0, 1)) and
  'relu' or 'linear' with the L1 penalty (losses.sparsity_kl / losses.sparsity_l1).
  """
  code_activation: str = 'sigmoid'

  def setup(self):
    if self.code_activation not in CODE_ACTIVATIONS:
      raise UserInputError(f'unknown config.model.code_activation {self.code_activation!r}; '
                           f'known: {", ".join(sorted(CODE_ACTIVATIONS))}')
    super().setup()

  def encode(self, x: jnp.ndarray) -> jnp.ndarray:
    return CODE_ACTIVATIONS[self.code_activation](self.encoder(x))
