"""Evaluation metrics on the devices: reconstruction quality (MSE, PSNR), the VAE's negative ELBO,
and the confusion matrix of a batch (its scores, IoU, Dice and pixel accuracy, are computed on
the host by inference.scoring.segmentation_scores); and how an evaluation's metrics are written
(flat_scalars) and logged (summary_text).

The metric functions take the model's outputs dict and a batch (see segae_jax.losses) and return
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
  the exact matrix of the whole split, from which inference.scoring.segmentation_scores computes
  every metric.
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


def flat_scalars(metrics: Mapping[str, Any], prefix: str) -> Dict[str, float]:
  """{'miou': .., 'per_class': {'bag': {'iou': ..}}} -> {'test/miou': .., 'test/iou/bag': ..}."""
  out = {}
  for k, v in metrics.items():
    if k == 'per_class':
      for name, values in v.items():
        for metric, value in values.items():
          if metric != 'pixels':
            out[f'{prefix}/{metric}/{name}'] = value
    else:
      out[f'{prefix}/{k}'] = v
  return out
