"""Segmentation terms over seg_logits [batch, height, width, classes] (see losses.base).

Each is a mean over the pixels (or images, for Dice) that count: real (batch['valid']), labelled
(batch['labeled']) and not ignored; with `axis_name` (pmap) over every device's, so that pmap,
sharded jit and one device give the same value and gradient (losses.base.axis_mean).

batch['pixel_weight'] (float32 [batch, h, w], optional) scales each pixel's term without
changing what the mean divides by: a pixel weighted 0 still counts in the mean (UniMatch's
normalisation of confident pseudo-labels, Yang et al., CVPR 2023: training.objectives.teacher).
Dice takes it as a soft mask of the pixels' predictions and targets; balanced_ce counts it in
each class's mean (a class-balanced term of confident pseudo-labels: each class's pixels weigh as
much as another's, however few of them are confident).
"""
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from segae_jax.batch import per_example, spatial_axes
from segae_jax.errors import UserInputError
from segae_jax.losses.base import LOSSES, axis_mean, softmax_focal, weighted_mean


# The terms registered here: they need masks ('segmentation') in the batch.
SEGMENTATION_TERMS = ('seg_ce', 'focal', 'dice', 'balanced_ce')


def _example_weights(batch) -> jnp.ndarray:
  """[batch] weights of examples that count for segmentation terms: real and labeled."""
  weights = jnp.ones(batch['segmentation'].shape[:1], jnp.float32)
  for key in ('valid', 'labeled'):
    if key in batch:
      weights = weights * batch[key].astype(jnp.float32)
  return weights


def _labels_and_keep(batch, num_classes: int, ignore_label: int):
  """([batch, h, w] int32 labels with ignored pixels set to 0, [batch, h, w] float32 1 = counts)."""
  labels = batch['segmentation'].astype(jnp.int32)
  keep = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  return jnp.where(keep, labels, 0), keep.astype(jnp.float32)


def _pixel_weights(batch, num_classes: int, class_weights, ignore_label: int):
  """([batch, h, w] float32 weights, [batch, h, w] int32 labels with ignored pixels set to 0)."""
  labels, keep = _labels_and_keep(batch, num_classes, ignore_label)
  weights = keep * per_example(_example_weights(batch), keep)
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
      raise UserInputError(f'class_weights has {class_weights.shape[0]} entries, the model '
                           f'predicts {num_classes} classes')
    weights = weights * class_weights[labels]
  return weights, labels


def _pixel_mean(values, weights, batch, axis_name: Optional[str]) -> jnp.ndarray:
  """weighted_mean of per-pixel values [batch, h, w], each scaled by batch['pixel_weight']
  where the batch has one (the denominator, sum(weights), unchanged: module doc)."""
  if 'pixel_weight' not in batch:
    return weighted_mean(values, weights, axis_name)
  return axis_mean(jnp.sum(values * weights * batch['pixel_weight']), jnp.sum(weights), axis_name)


@LOSSES.register('seg_ce')
def seg_ce(outputs, batch, class_weights=None, ignore_label: int = 255,
           axis_name: Optional[str] = None):
  """Softmax cross-entropy of seg_logits against integer labels, nats per labeled pixel.

  class_weights: optional [num_classes] per-class weights; pixels equal to `ignore_label` (or
  outside [0, num_classes)) do not count.
  """
  logits = outputs['seg_logits']
  weights, labels = _pixel_weights(batch, logits.shape[-1], class_weights, ignore_label)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  value = _pixel_mean(ce, weights, batch, axis_name)
  return value, {'seg_ce': value}


@LOSSES.register('focal')
def focal(outputs, batch, gamma: float = 2.0, class_weights=None, ignore_label: int = 255,
          axis_name: Optional[str] = None):
  """Multi-class focal loss -(1 - p_t)^gamma * log p_t per labeled pixel (Lin et al., "Focal Loss
  for Dense Object Detection", ICCV 2017, Eq. 5; class_weights play the role of alpha_t), as
  losses.softmax_focal computes it.
  """
  logits = outputs['seg_logits']
  weights, labels = _pixel_weights(batch, logits.shape[-1], class_weights, ignore_label)
  value = _pixel_mean(softmax_focal(logits, labels, gamma), weights, batch, axis_name)
  return value, {'focal': value}


@LOSSES.register('dice')
def dice(outputs, batch, exclude_background: bool = False, smooth: float = 1.0,
         ignore_label: int = 255, axis_name: Optional[str] = None):
  """Soft multi-class Dice loss per class 1 - (I + s) / ((P + T) / 2 + s) with I = sum(p * t),
  P = sum(p), T = sum(t) over the image's labeled pixels (= 1 - 2I / (P + T) for s = 0),
  averaged over classes, per image, then over labeled images (Milletari et al., V-Net, 2016).

  This is optax.losses.dice_loss's formula (alpha = beta = 1/2), written here because optax's
  version has no ignore mask and, given probabilities, checks them with Python control flow that
  fails under jit. Ignored pixels are removed from prediction and target alike; with
  `exclude_background` class 0 does not count.
  """
  logits = outputs['seg_logits']
  num_classes = logits.shape[-1]
  labels, keep = _labels_and_keep(batch, num_classes, ignore_label)
  if 'pixel_weight' in batch:
    keep = keep * batch['pixel_weight']
  probs = jax.nn.softmax(logits) * keep[..., None]
  targets = jax.nn.one_hot(labels, num_classes) * keep[..., None]
  pixels = spatial_axes(probs)
  intersection = jnp.sum(probs * targets, axis=pixels)  # [batch, classes]
  total = jnp.sum(probs, axis=pixels) + jnp.sum(targets, axis=pixels)
  per_class = 1.0 - (intersection + smooth) / (0.5 * total + smooth)
  per_image = jnp.mean(per_class[:, 1 if exclude_background else 0:], axis=-1)
  value = weighted_mean(per_image, _example_weights(batch), axis_name)
  return value, {'dice': value}


@LOSSES.register('balanced_ce')
def balanced_ce(outputs, batch, ignore_label: int = 255, axis_name: Optional[str] = None):
  """Class-balanced cross-entropy: the mean softmax cross-entropy of each class's counted pixels,
  averaged over the classes that have any in the batch (every device's), nats per pixel:

    L = 1 / |K| * sum_{c in K} (sum_{i: y_i = c} w_i ce_i) / (sum_{i: y_i = c} w_i),

  w_i the pixel's weight (real, labelled, not ignored, times batch['pixel_weight'] where given:
  for pseudo-labels, 1 where confident), K the classes with sum w > 0. Each class weighs the same
  whatever its pixel count, so a background that covers most of an image (and most of the
  confident pseudo-labels) no longer drowns the objects' classes: the per-class normalisation of
  class-balanced losses (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
  CVPR 2019, with beta -> 1 on the batch's pixels). Numerators and denominators are summed over
  the devices of `axis_name` before the ratio (losses.base.axis_mean), so pmap, sharded jit and
  one device agree.
  """
  logits = outputs['seg_logits']
  num_classes = logits.shape[-1]
  weights, labels = _pixel_weights(batch, num_classes, None, ignore_label)
  if 'pixel_weight' in batch:
    weights = weights * batch['pixel_weight']
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  members = jax.nn.one_hot(labels, num_classes) * weights[..., None]  # [n, *S, classes]
  pixels = tuple(range(members.ndim - 1))
  numerator = jnp.sum(members * ce[..., None], axis=pixels)            # [classes]
  denominator = jnp.sum(members, axis=pixels)
  total = denominator if axis_name is None else jax.lax.psum(denominator, axis_name)
  present = (total > 0).astype(jnp.float32)
  per_class = axis_mean(numerator, denominator, axis_name)
  value = jnp.sum(per_class * present) / jnp.maximum(jnp.sum(present), 1.0)
  return value, {'balanced_ce': value}
