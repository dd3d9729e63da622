"""Convolutional encoder and decoder shared by the autoencoder family.

Layout is NHWC: images are `[batch, height, width, channels]`. The encoder halves the resolution
with each stride-2 convolution, so height and width must be divisible by `2 ** len(features)`.
"""
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from segae_jax.errors import UserInputError
from segae_jax.models import conv_ops

ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'elu': nn.elu,
    'leaky_relu': nn.leaky_relu,
    'tanh': jnp.tanh,
}


def get_activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  if name not in ACTIVATIONS:
    raise UserInputError(f'unknown activation {name!r}; known: {", ".join(sorted(ACTIVATIONS))}')
  return ACTIVATIONS[name]


def check_divisible(image_shape: Sequence[int], num_downsamplings: int) -> None:
  """Raises UserInputError unless height and width divide by 2**num_downsamplings."""
  factor = 2 ** num_downsamplings
  height, width = image_shape[0], image_shape[1]
  if height % factor or width % factor:
    raise UserInputError(
        f'image size {height}x{width} is not divisible by {factor}, the total downsampling of '
        f'{num_downsamplings} stride-2 levels (config.model.features); change the features or '
        'the image size')


class ConvEncoder(nn.Module):
  """Stride-2 3x3 convolutions, then a dense hidden layer and a dense output.

  Attributes:
    features: channels of each stride-2 convolution, e.g. (32, 64).
    hidden_dim: width of the dense layer after flattening.
    output_dim: size of the output vector (latent size, or 2x latent size for a VAE).
    activation: name in ACTIVATIONS.
    conv_impl: how convolution gradients are computed: 'auto' | 'xla' | 'matmul_grad'
      (segae_jax.models.conv_ops; the same mathematics either way).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32. None: float32.
  """
  features: Sequence[int]
  hidden_dim: int
  output_dim: int
  activation: str = 'relu'
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, height, width, channels] float -> [batch, output_dim] float."""
    act = get_activation(self.activation)
    for i, f in enumerate(self.features):
      x = act(conv_ops.Conv(self.conv_impl, f, (3, 3), strides=(2, 2), padding='SAME',
                            dtype=self.dtype, name=f'conv{i}')(x))
    x = x.reshape((x.shape[0], -1))
    x = act(nn.Dense(self.hidden_dim, dtype=self.dtype, name='hidden')(x))
    return nn.Dense(self.output_dim, dtype=self.dtype, name='out')(x)


class ConvDecoder(nn.Module):
  """Mirror of ConvEncoder: dense layers, reshape, stride-2 3x3 transposed convolutions.

  Attributes:
    features: the encoder's features (the decoder runs them in reverse).
    hidden_dim: width of the first dense layer.
    image_shape: (height, width, channels) of the output.
    activation: name in ACTIVATIONS.
    conv_impl, dtype: as in ConvEncoder.
  """
  features: Sequence[int]
  hidden_dim: int
  image_shape: Tuple[int, int, int]
  activation: str = 'relu'
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
    """[batch, latent] -> logits [batch, height, width, channels] (sigmoid gives the image)."""
    act = get_activation(self.activation)
    factor = 2 ** len(self.features)
    h0, w0 = self.image_shape[0] // factor, self.image_shape[1] // factor
    x = act(nn.Dense(self.hidden_dim, dtype=self.dtype, name='hidden')(z))
    x = act(nn.Dense(h0 * w0 * self.features[-1], dtype=self.dtype, name='project')(x))
    x = x.reshape((z.shape[0], h0, w0, self.features[-1]))
    for i, f in enumerate(reversed(self.features[:-1])):
      x = act(conv_ops.ConvTranspose(f, (3, 3), strides=(2, 2), padding='SAME',
                                     impl=self.conv_impl, dtype=self.dtype, name=f'deconv{i}')(x))
    return conv_ops.ConvTranspose(self.image_shape[2], (3, 3), strides=(2, 2), padding='SAME',
                                  impl=self.conv_impl, dtype=self.dtype, name='out')(x)
