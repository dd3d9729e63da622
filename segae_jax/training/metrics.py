"""Evaluation metrics: reconstruction quality (MSE, PSNR), the VAE's negative ELBO, and
segmentation scores (IoU, Dice, pixel accuracy) from an accumulated confusion matrix.

All functions take the model's outputs dict and a batch (see segae_jax.losses) and return
{name: scalar}, each the mean over the batch's real examples (batch['valid']).
"""
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def confusion_matrix(labels: jnp.ndarray, predictions: jnp.ndarray, num_classes: int,
                     weights: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Pixel counts C[true, predicted] as float32 [num_classes, num_classes].

  labels, predictions: int [...] of the same shape; labels outside [0, num_classes) (the ignore
  label) and pixels with weight 0 are not counted. Summing matrices over batches and devices gives
  the exact matrix of the whole split, from which `segmentation_scores` computes every metric.
  """
  labels = labels.astype(jnp.int32).reshape(-1)
  predictions = predictions.astype(jnp.int32).reshape(-1)
  keep = (labels >= 0) & (labels < num_classes)
  w = keep.astype(jnp.float32)
  if weights is not None:  # Same shape as labels.
    w = w * weights.reshape(-1).astype(jnp.float32)
  index = jnp.where(keep, labels, 0) * num_classes + predictions
  counts = jnp.bincount(index, weights=w, length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray,
                        class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Metrics from a confusion matrix C[true, predicted] (numpy, on the host).

  Per class c: IoU_c = TP / (TP + FP + FN), Dice_c = 2 TP / (2 TP + FP + FN) (= F1). mIoU and
  mean Dice average over the classes that occur in the ground truth or the predictions (a class
  absent from both has no defined IoU); pixel_accuracy = trace / total. Returns floats plus
  'per_class': {name: {'iou', 'dice', 'pixels'}}.
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  fp = confusion.sum(0) - tp
  fn = confusion.sum(1) - tp
  union = tp + fp + fn
  present = union > 0
  iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
  dice = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=present)
  names = list(class_names) if class_names is not None else [str(c) for c in range(len(tp))]
  return {
      'miou': float(iou[present].mean()) if present.any() else 0.0,
      'mean_dice': float(dice[present].mean()) if present.any() else 0.0,
      'pixel_accuracy': float(tp.sum() / max(confusion.sum(), 1.0)),
      'per_class': {name: {'iou': float(iou[c]), 'dice': float(dice[c]),
                           'pixels': int(confusion[c].sum())}
                    for c, name in enumerate(names)},
  }


def summary_text(metrics: Mapping[str, Any], loss_terms: Sequence[str] = ()) -> str:
  """One progress line's 'name=value' pairs of an evaluation's scalar metrics, with the loss
  terms (config.loss's keys, e.g. 'dice', the soft Dice loss term) shown as '<term>_loss' so
  that they cannot be read as the metric of a similar name ('mean_dice', Dice from the confusion
  matrix). 'per_class' and other non-scalars are left out."""
  shown = []
  for k, v in sorted(metrics.items()):
    if isinstance(v, (int, float, np.floating, np.integer)):
      shown.append(f'{k}_loss={v:.4g}' if k in loss_terms else f'{k}={v:.4g}')
  return ' '.join(shown)

