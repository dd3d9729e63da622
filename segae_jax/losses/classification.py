"""Classification terms over outputs['class_logits'] [batch, classes] (see losses.base).

They read batch['label'] (int32 [batch] class ids) and respect batch['valid'] [batch] float32
(1 = real example, 0 = padding). Values are means over the real examples in nats.

Class weights. With `class_weights` (float [classes]) example i counts w[label_i] times:
  reduction 'weighted_mean' (the default): sum_i w_i l_i / sum_i w_i, PyTorch's
    CrossEntropyLoss(weight=...) convention and seg_ce's, so weights re-balance classes rather
    than rescale the loss;
  reduction 'mean': sum_i w_i l_i / n, the weighted loss averaged over the n real examples
    (tools/probe's 'weighted_ce', as its published results were computed).
Without class weights both are the plain mean.
"""
from typing import Mapping

import jax.numpy as jnp
import optax

from segae_jax.errors import UserInputError
from segae_jax.losses.base import LOSSES, batch_mean, softmax_focal, weighted_mean

REDUCTIONS = ('weighted_mean', 'mean')


def class_weighted_mean(per_example: jnp.ndarray, labels: jnp.ndarray,
                        batch: Mapping[str, jnp.ndarray], class_weights=None,
                        reduction: str = 'weighted_mean') -> jnp.ndarray:
  """The mean of per-example losses over the real examples, each weighted by its class's weight
  (see the module docstring for the two reductions).

  Args:
    per_example: float [batch] losses; labels: int [batch] class ids in [0, classes).
    batch: holds the optional 'valid' float32 [batch] mask.
    class_weights: None or float [classes].
    reduction: 'weighted_mean' or 'mean'.
  Returns:
    A float32 scalar.
  Raises:
    UserInputError: an unknown reduction.
  """
  if reduction not in REDUCTIONS:
    raise UserInputError(f'reduction: unknown {reduction!r}; known: {", ".join(REDUCTIONS)}')
  if class_weights is None:
    return batch_mean(per_example, batch)
  weights = jnp.asarray(class_weights)[labels]
  if reduction == 'mean':
    return batch_mean(per_example * weights, batch)
  if 'valid' in batch:
    weights = weights * batch['valid'].astype(jnp.float32)
  return weighted_mean(per_example, weights)


def _logits_and_labels(outputs, batch, class_weights):
  """(class_logits [batch, classes], int32 labels [batch]) after checking class_weights' size."""
  logits = outputs['class_logits']
  if class_weights is not None and jnp.shape(class_weights) != (logits.shape[-1],):
    raise UserInputError(f'class_weights has shape {jnp.shape(class_weights)}, the model predicts '
                         f'{logits.shape[-1]} classes')
  return logits, batch['label'].astype(jnp.int32)


@LOSSES.register('class_ce')
def class_ce(outputs, batch, class_weights=None, reduction: str = 'weighted_mean'):
  """Softmax cross-entropy of class_logits against batch['label'], nats per example.

  class_weights: optional float [classes]; reduction: 'weighted_mean' (PyTorch's weighted-CE
  convention) or 'mean' (see the module docstring).
  """
  logits, labels = _logits_and_labels(outputs, batch, class_weights)
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  value = class_weighted_mean(per_example, labels, batch, class_weights, reduction)
  return value, {'class_ce': value}


@LOSSES.register('class_focal')
def class_focal(outputs, batch, gamma: float = 2.0, class_weights=None,
                reduction: str = 'weighted_mean'):
  """Softmax focal loss (softmax_focal) of class_logits against batch['label'], nats per example;
  class_weights play the role of alpha_t (Lin et al. 2017, Eq. 5). gamma = 0 is class_ce."""
  logits, labels = _logits_and_labels(outputs, batch, class_weights)
  per_example = softmax_focal(logits, labels, gamma)
  value = class_weighted_mean(per_example, labels, batch, class_weights, reduction)
  return value, {'class_focal': value}

