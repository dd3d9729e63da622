"""Flax Linen models, registered by name (config.model.name).

  from segae_jax import models
  model = models.build(config.model, image_shape=(28, 28, 1))
  outputs = model.apply(variables, images, rngs={'reparam': key})
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn

from segae_jax.models.autoencoder import Autoencoder, SparseAutoencoder
from segae_jax.models.layers import ConvDecoder, ConvEncoder
from segae_jax.models.registry import MODELS
from segae_jax.models.segnet import SegNet
from segae_jax.models.unet import SegAutoencoder, UNet, UNetAutoencoder, VAEUNet
from segae_jax.models.vae import VAE, reparameterize
from segae_jax.errors import UserInputError


def build(model_config: Mapping[str, Any], image_shape: Sequence[int], **from_data) -> nn.Module:
  """Builds the registered model `model_config['name']` with the other fields as attributes.

  Args:
    model_config: {'name': registered name, field: value, ...}.
    image_shape: (height, width, channels) of the input images.
    **from_data: attributes the training system knows (num_classes, norm_axis_name); each is
      passed only to models that have that field, and the config's value wins.

  Raises:
    UserInputError: unknown model name, or a field the model does not have.
  """
  kwargs = dict(model_config)
  name = kwargs.pop('name')
  cls = MODELS.get(name)
  fields = set(getattr(cls, '__dataclass_fields__', {}))
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise UserInputError(f'config.model: model {name!r} has no field(s) {", ".join(unknown)}')
  for key, value in from_data.items():
    if key in fields and key not in kwargs:
      kwargs[key] = value
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return cls(image_shape=tuple(int(s) for s in image_shape), **kwargs)


__all__ = ['Autoencoder', 'SparseAutoencoder', 'VAE', 'ConvEncoder', 'ConvDecoder', 'MODELS',
           'SegAutoencoder', 'SegNet', 'UNet', 'UNetAutoencoder', 'VAEUNet', 'build',
           'reparameterize']
