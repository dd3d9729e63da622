"""evaluate: a split's exact metrics on the host, from the compiled eval_step (training/step.py)
summed over every batch and device; training's test metrics and `segae-evaluate --mode=resize`.
"""
from typing import Any, Dict

import jax
import numpy as np

from segae_jax import data
from segae_jax.inference import scoring


def evaluate(strategy, state, dataset: data.Dataset, config, rng: jax.Array,
             split: str = 'test', keep_confusion: bool = False) -> Dict[str, Any]:
  """Exact metrics over the whole split: means of eval_step's per-example sums, and for
  segmentation models the scores of the summed confusion matrix (scoring.segmentation_scores:
  'miou', 'mean_dice', 'pixel_accuracy', 'per_class'), with keep_confusion the matrix itself
  too ('confusion': float64 [classes, classes] pixels, C[true, predicted])."""
  totals: Dict[str, np.ndarray] = {}
  for batch in data.eval_inputs(config, dataset, split, strategy.device_axis_size,
                                jax.process_index(), jax.process_count()):
    sums = strategy.fetch(strategy.eval_step(state, strategy.put_batch(batch), rng))
    for k, v in sums.items():
      totals[k] = totals[k] + v if k in totals else np.asarray(v, np.float64)
  count = float(totals.pop('count'))
  confusion = totals.pop('confusion', None)
  results: Dict[str, Any] = {k: float(v) / count for k, v in totals.items()}
  if confusion is not None:
    results.update(scoring.segmentation_scores(confusion, dataset.class_names))
    if keep_confusion:
      results['confusion'] = confusion
  return results
