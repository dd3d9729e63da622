"""Clusters without labels, and their scores against labels: the shared ground of every
label-free segmentation method (segae_jax.tools.unsupervised and the methods it runs).

k-means is scipy's (scipy.cluster.vq.kmeans2, k-means++ initialisation; Arthur and
Vassilvitskii 2007); clusters are matched one-to-one to classes by the Hungarian algorithm
(scipy.optimize.linear_sum_assignment; Kuhn 1955), the protocol of unsupervised segmentation
papers (e.g. PiCIE, Cho et al. CVPR 2021, Sec. 4; STEGO, Hamilton et al. ICLR 2022, Sec. 4.1).
"""
from typing import Dict, Sequence

import numpy as np
from scipy import optimize
from scipy.cluster import vq

from segae_jax.errors import UserInputError


def hungarian_scores(confusion: np.ndarray) -> Dict[str, object]:
  """Scores a clustering against ground truth after one-to-one Hungarian matching.

  Args:
    confusion: [num_classes, num_clusters] pixel counts C[true class, cluster].

  Returns:
    'assignment': [num_clusters] int, the class matched to each cluster or -1 (more clusters than
      classes); 'miou': mean IoU over the classes present in the ground truth (a class left
      without a cluster scores 0); 'per_class_iou': [num_classes] list; 'pixel_accuracy':
      matched pixels / all pixels.
  """
  confusion = np.asarray(confusion, np.float64)
  num_classes, num_clusters = confusion.shape
  rows, cols = optimize.linear_sum_assignment(confusion, maximize=True)
  assignment = np.full(num_clusters, -1, np.int64)
  assignment[cols] = rows
  tp = np.zeros(num_classes)
  predicted = np.zeros(num_classes)  # Pixels given to each class through its cluster.
  for cluster, c in enumerate(assignment):
    if c >= 0:
      tp[c] = confusion[c, cluster]
      predicted[c] = confusion[:, cluster].sum()
  truth = confusion.sum(1)
  union = truth + predicted - tp
  iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
  present = truth > 0
  return {'assignment': assignment.tolist(),
          'miou': float(iou[present].mean()) if present.any() else 0.0,
          'per_class_iou': iou.tolist(),
          'pixel_accuracy': float(tp.sum() / max(confusion.sum(), 1.0))}


def foreground_iou(confusion: np.ndarray, background: int = 0) -> float:
  """IoU of the foreground (every class but `background`) when each cluster is called background
  or foreground by the majority of its pixels; confusion as in hungarian_scores."""
  confusion = np.asarray(confusion, np.float64)
  bg = confusion[background]
  fg = confusion.sum(0) - bg
  fg_cluster = fg > bg
  tp = fg[fg_cluster].sum()
  fp = bg[fg_cluster].sum()
  fn = fg[~fg_cluster].sum()
  return float(tp / (tp + fp + fn)) if tp + fp + fn > 0 else 0.0


def scores(confusion: np.ndarray, class_names: Sequence[str]) -> Dict[str, object]:
  """hungarian_scores with the per-class IoUs by name, plus 'foreground_iou' (class 0 is the
  background)."""
  result = hungarian_scores(confusion)
  result['per_class_iou'] = dict(zip(class_names, result['per_class_iou']))
  result['foreground_iou'] = foreground_iou(confusion)
  return result


def fit_kmeans(features: np.ndarray, k: int, iterations: int, seed: int,
               what: str = 'config.num_clusters') -> np.ndarray:
  """k-means centres float32 [k, dims] of features [n, dims] (scipy kmeans2, k-means++ init).

  Raises:
    UserInputError: k < 2 or more clusters than samples, naming `what`.
  """
  if k < 2 or k > len(features):
    raise UserInputError(f'{what}={k}: expected 2..{len(features)} (the number of samples '
                         'clustered)')
  centres, _ = vq.kmeans2(features.astype(np.float64), k, iter=iterations, minit='++',
                          rng=np.random.default_rng(seed))
  return centres.astype(np.float32)


def assign(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
  """Nearest centre (squared Euclidean) of each feature: [..., dims] -> int64 [...]."""
  flat = features.reshape(-1, features.shape[-1])
  distance = (centres ** 2).sum(1)[None, :] - 2.0 * flat @ centres.T
  return distance.argmin(1).reshape(features.shape[:-1])


class Standardizer:
  """Per-block standardisation: each dimension to mean 0 and sd 1, then each block scaled to
  weight / sqrt(its dimensions), so every block adds weight^2 to the expected squared distance
  between two samples whatever its width (a constant dimension is dropped: scale 0).

  Args:
    weights: {block name: weight}; blocks of weight 0 are left out.
  """

  def __init__(self, weights: Dict[str, float]):
    self.weights = {k: float(v) for k, v in weights.items() if v > 0}
    if not self.weights:
      raise UserInputError('config: every feature weight is 0, nothing to cluster')
    self.mean = None
    self.scale = None

  def fit(self, blocks: Dict[str, np.ndarray]) -> None:
    """Learns each dimension's mean and scale from {block: [..., dims]} samples."""
    self.mean, self.scale = {}, {}
    for name in self.weights:
      x = blocks[name].reshape(-1, blocks[name].shape[-1]).astype(np.float64)
      std = x.std(0)
      self.mean[name] = x.mean(0).astype(np.float32)
      self.scale[name] = np.where(std > 1e-8, self.weights[name] / np.sqrt(x.shape[-1]) /
                                  np.maximum(std, 1e-8), 0.0).astype(np.float32)

  def transform(self, blocks: Dict[str, np.ndarray]) -> np.ndarray:
    """{block: [..., dims]} -> float32 [..., total dims], standardised and weighted.

    Raises:
      RuntimeError: called before fit.
    """
    if self.mean is None:
      raise RuntimeError('Standardizer.transform before fit')
    return np.concatenate([(blocks[n] - self.mean[n]) * self.scale[n] for n in self.weights],
                          -1).astype(np.float32)
