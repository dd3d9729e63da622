"""'supervised': config.loss on the labelled examples; with a pool, its terms that need no masks
(reconstruction, KL, sparsity) over every image of the step, labelled and pool (the
alpha-weighted joint objective of the SegAE). Without a pool this is the training of every
earlier release, bit for bit."""
from typing import Any, Mapping

import jax.numpy as jnp

from segae_jax.training.objectives.base import (OBJECTIVES, Batch, Objective, RunFacts, forward,
                                                pool_rngs, reconstruction_part)
from segae_jax.training.objectives.helpers import concat_parts, split_loss


@OBJECTIVES.register('supervised')
class Supervised(Objective):
  """config.loss, today's training; with a pool the joint reconstruction of every image (module
  doc). `unlabeled_input` is the hook the masked objective changes."""

  def __init__(self, facts: RunFacts, params: Mapping[str, Any]):
    super().__init__(facts, params)
    self.seg_fn, self.other_fn, _ = split_loss(facts)

  def unlabeled_input(self, part: Batch) -> Batch:
    """The pass batch of the unlabelled images: the model input 'image' and what the losses
    compare it with; the plain weak view here."""
    return {'image': part['image']}

  def loss(self, params, state, batch, rngs, axis_name):
    pool = batch.get('unlabeled')
    if pool is None:
      if reconstruction_part(self.facts) == 'labeled':
        batch = dict(batch, **self.unlabeled_input(batch))
      return super().loss(params, state, batch, rngs, axis_name)
    outputs, stats = forward(state, params, batch['image'], rngs)
    pool_batch = self.unlabeled_input(pool)
    pool_outputs, _ = forward(state, params, pool_batch['image'], pool_rngs(rngs))
    seg_loss, metrics = self.seg_fn(outputs, batch, axis_name)
    shared = sorted(set(outputs) & set(pool_outputs))
    both = {k: jnp.concatenate([outputs[k], pool_outputs[k]]) for k in shared}
    other_loss, other_metrics = self.other_fn(both, concat_parts([batch, pool_batch]), axis_name)
    metrics.update(other_metrics)
    metrics['loss'] = seg_loss + other_loss
    return metrics['loss'], metrics, stats
