"""The model a run's config describes, and its inference-mode functions: what training builds and
trains, what a restored run, native-resolution scoring and an export apply.

Light to import: JAX is imported inside the functions, so the tools' `--help` stays fast.
"""
from typing import Any, Dict, Optional

import ml_collections

from segae_jax.data.normalize import Normalization


def build_model(config: ml_collections.ConfigDict, image_shape, num_classes: Optional[int] = None,
                norm_axis_name: Optional[str] = None):
  """The model train_and_evaluate trains: config.model for images of `image_shape` (height,
  width, channels) and `num_classes` classes, in config.compute_dtype with config.conv_impl;
  `norm_axis_name` as in models.build. Restoring a run (segae_jax.tools.common) and scoring at
  native resolution (scoring.NativeScorer) build it here too."""
  import jax.numpy as jnp
  from segae_jax import models
  return models.build(config.model, image_shape, num_classes=num_classes,
                      norm_axis_name=norm_axis_name,
                      dtype=jnp.dtype(config.get('compute_dtype', 'float32')),
                      conv_impl=config.get('conv_impl', 'auto'))


def apply(model, variables: Dict[str, Any], images) -> Dict[str, Any]:
  """The model's outputs in inference mode (train=False; a sampling model draws its noise from
  the fixed key PRNGKey(0), so the same images always give the same outputs); pure, so it
  composes inside jax.jit."""
  import jax
  return model.apply(variables, images, train=False, rngs={'reparam': jax.random.PRNGKey(0)})


def seg_logits(outputs: Dict[str, Any]):
  """The class logits of the model's outputs, float32 [batch, height, width, classes]."""
  return outputs['seg_logits'].astype('float32')


def pixel_logits(model, normalization: Normalization, variables: Dict[str, Any], pixels):
  """Pure: float32 pixels [batch, height, width, channels] in the stored images' units (0..255
  for 8-bit images, 0..65535 for 16-bit, as stored for float) -> float32 class logits [batch,
  height, width, classes], the run's input `normalization` inside (the function an export
  serialises)."""
  import jax.numpy as jnp
  return seg_logits(apply(model, variables, normalization(pixels, jnp)))
