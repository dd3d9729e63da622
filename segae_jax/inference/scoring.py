"""Segmentation scores: a confusion matrix counted on the host, its IoU, Dice and pixel accuracy,
and a split scored at each image's own resolution through a Segmenter (what training reports for
images larger than its input, NativeScorer, and what `segae-evaluate` computes in tile mode).
"""
import functools
from typing import Any, Dict, Optional, Sequence

import numpy as np

from segae_jax import batch
from segae_jax.inference.model import build_model, pixel_logits
from segae_jax.inference.segmenter import Inference, Segmenter


def confusion_counts(labels, predictions, num_classes: int,
                     num_predicted: Optional[int] = None) -> np.ndarray:
  """int64 [num_classes, num_predicted] pixel counts C[label, prediction] from int maps of one
  shape (num_predicted defaults to num_classes: a confusion matrix for segmentation_scores);
  labels outside [0, num_classes) (an ignore label) are not counted."""
  num_predicted = num_classes if num_predicted is None else num_predicted
  labels = np.asarray(labels, np.int64).reshape(-1)
  predictions = np.asarray(predictions, np.int64).reshape(-1)
  keep = (labels >= 0) & (labels < num_classes)
  index = labels[keep] * num_predicted + predictions[keep]
  return np.bincount(index, minlength=num_classes * num_predicted).reshape(num_classes,
                                                                            num_predicted)


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


def confusion_of(segment, dataset, split: str, chunk: int = 64) -> np.ndarray:
  """int64 [classes, classes] pixel counts C[true, predicted] of `split`, each image's label map
  segment([image])'s (a Segmenter) against its stored mask, `chunk` images at a time."""
  source = getattr(dataset, split)
  k = dataset.num_classes
  counts = np.zeros((k, k), np.int64)
  for start in range(0, len(source), chunk):
    examples = source.__getitems__(np.arange(start, min(start + chunk, len(source))))
    labels = segment([np.asarray(image) for image in examples['image']])
    for truth, predicted in zip(examples['segmentation'], labels):
      counts += confusion_counts(np.asarray(truth).reshape(predicted.shape), predicted, k)
  return counts


def has_larger_images(dataset, split: str) -> bool:
  """Whether `split` holds images larger than the model input on an axis (a folder dataset
  stored at its images' own sizes): then only tiles at native resolution score what it holds."""
  largest = (dataset.sizes or {}).get(split, {})
  height, width = batch.spatial_shape(dataset.image_shape, 0)
  return largest.get('max_height', 0) > height or largest.get('max_width', 0) > width


class NativeScorer:
  """What training reports for a split of images larger than the input: its segmentation scores
  at each image's own resolution (tiled as `evaluate --mode=auto` does), so that a run's
  results.json equals `evaluate`'s and no centre window stands in for a whole image. Built once
  per run (the model for inference, its logits function compiled once), then called with each
  evaluation's variables.

  Args:
    config: the run's config; dataset: its data.Dataset; batch_size: tiles per forward pass
      (default config.eval_batch_size).
  """

  def __init__(self, config, dataset, split: str = 'test', batch_size: Optional[int] = None):
    import jax  # pylint: disable=import-outside-toplevel
    model = build_model(config, dataset.image_shape, dataset.num_classes)
    self.logits = jax.jit(functools.partial(pixel_logits, model, dataset.normalization))
    self.dataset, self.split = dataset, split
    self.batch_size = batch_size or config.eval_batch_size

  def __call__(self, variables):
    """variables {'params', maybe 'batch_stats'} on the host (the evaluated ones, e.g. an EMA
    teacher's) -> 'miou', 'mean_dice', 'pixel_accuracy' and 'per_class' (native pixels)."""
    logits = lambda pixels: np.asarray(self.logits(variables, np.asarray(pixels, np.float32)))
    segment = Segmenter(logits, self.dataset.image_shape, self.dataset.class_names, Inference(),
                        self.batch_size)
    counts = confusion_of(segment, self.dataset, self.split)
    return segmentation_scores(counts, self.dataset.class_names)
