"""Flax Linen models, registered by name (config.model.name).

  from segae_jax import models
  model = models.build(config.model, image_shape=(28, 28, 1))
  outputs = model.apply(variables, images, rngs={'reparam': key})

A segmenting model (SegmentationModel) also has `encode` -> (features, skips) and `decode` ->
outputs, with `__call__` = decode(*encode(x)) (see SegmentationModel and docs/api.md).
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn

from segae_jax.models.autoencoder import Autoencoder, SparseAutoencoder
from segae_jax.models.layers import (ConvDecoder, ConvEncoder, Layers, SegmentationModel,
                                     layers_of, make_layers)
from segae_jax.models.registry import MODELS
from segae_jax.models.segnet import SegNet
from segae_jax.models.unet import SegAutoencoder, UNet, UNetAutoencoder, UNetBase, VAEUNet
from segae_jax.models.vae import VAE, reparameterize
from segae_jax.errors import UserInputError

# Attributes models.build sets itself, never from the config.
_BUILT_FIELDS = ('layers',)


def build(model_config: Mapping[str, Any], image_shape: Sequence[int], **from_data) -> nn.Module:
  """Builds the registered model `model_config['name']` with the other fields as attributes.

  A segmentation model (SegmentationModel: the U-Net family and SegNet) also gets its layer
  factories (`layers`, segae_jax.models.layers.make_layers), made and validated here, once.

  Args:
    model_config: {'name': registered name, field: value, ...}.
    image_shape: (height, width, channels) of the input images.
    **from_data: attributes the training system knows (num_classes, norm_axis_name, dtype,
      conv_impl); each is passed only to models that have that field, and the config's value
      wins.

  Raises:
    UserInputError: (one line) unknown model name, a field the model does not have, or bad
      normalisation settings (config.model.norm, config.model.group_norm_groups) or
      config.conv_impl.
  """
  kwargs = dict(model_config)
  name = kwargs.pop('name')
  cls = MODELS.get(name)
  fields = set(getattr(cls, '__dataclass_fields__', {})) - set(_BUILT_FIELDS)
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise UserInputError(f'config.model: model {name!r} has no field(s) {", ".join(unknown)}')
  for key, value in from_data.items():
    if key in fields and key not in kwargs:
      kwargs[key] = value
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  model = cls(image_shape=tuple(int(s) for s in image_shape), **kwargs)
  if isinstance(model, SegmentationModel):
    model = model.clone(layers=layers_of(model))
  return model


def segments(name: str) -> bool:
  """Whether the registered model `name` outputs 'seg_logits' (needs masks to train).

  Raises:
    UserInputError: unknown name.
  """
  return bool(getattr(MODELS.get(name), 'segments', False))


def reconstructs(name: str) -> bool:
  """Whether the registered model `name` outputs 'rec_logits' (a reconstruction of its input).

  Raises:
    UserInputError: unknown name.
  """
  return bool(getattr(MODELS.get(name), 'reconstructs', False))


def is_unet_family(model: nn.Module) -> bool:
  """Whether `model` has a U-Net encoder (`model.encoder`, a UNetEncoder: unet, segae, unet_ae,
  vae_unet), e.g. for tools that read the encoder's levels."""
  return isinstance(model, UNetBase)


__all__ = ['Autoencoder', 'SparseAutoencoder', 'VAE', 'ConvEncoder', 'ConvDecoder', 'Layers',
           'MODELS', 'SegAutoencoder', 'SegNet', 'SegmentationModel', 'UNet', 'UNetAutoencoder',
           'UNetBase', 'VAEUNet', 'build', 'is_unet_family', 'layers_of', 'make_layers',
           'reconstructs', 'reparameterize', 'segments']
