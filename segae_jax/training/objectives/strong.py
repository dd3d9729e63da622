"""'supervised_strong': 'supervised' with the labelled images seen as the teacher methods see the
pool, the strong view CutMix'ed between pairs together with their masks: the teacher methods'
augmentation without a teacher."""
from typing import Any, Dict

from segae_jax import batch as batch_lib
from segae_jax.errors import UserInputError
from segae_jax.training.objectives.base import OBJECTIVES, Batch
from segae_jax.training.objectives.helpers import (CUTMIX_DEFAULTS, cutmix, pair_multiple,
                                                   strong_views, swap_pairs)
from segae_jax.training.objectives.supervised import Supervised


def mixed_labeled(batch: Batch) -> Dict[str, Any]:
  """The labelled batch seen through its strong view, CutMix'ed inside pairs (swap_pairs) with
  its masks: 'image' [n, h, w, c] and 'segmentation' [n, h, w] take the partner's pixels inside
  batch['cutmix']. A pair mixes only when both of its examples have masks (batch['labeled'],
  when the batch flags them), so no pixel of a hidden mask is learnt."""
  box = batch['cutmix'] > 0
  if 'labeled' in batch:
    both = (batch['labeled'] > 0) & (swap_pairs(batch['labeled']) > 0)
    box = box & batch_lib.per_example(both, box)
  image, seg = cutmix(box, batch['strong'], batch['segmentation'])
  return dict(batch, image=image, segmentation=seg)


@OBJECTIVES.register('supervised_strong')
class StrongSupervised(Supervised):
  """'supervised' with the labelled images seen as the teacher methods see the pool: the strong
  view (data.views.StrongView, config.data.strong_augment) CutMix'ed between pairs together with
  their masks (French et al., BMVC 2020). The baseline that tells what pseudo-labels buy from
  what their augmentation buys (Oliver et al., "Realistic Evaluation of Deep Semi-Supervised
  Learning Algorithms", NeurIPS 2018, Sec. 3: the same augmentation for the baseline).
  """
  name = 'supervised_strong'
  defaults = CUTMIX_DEFAULTS

  def check(self) -> None:
    if not self.facts.segments:
      raise UserInputError(f'config.objective={self.name!r} augments masks: model '
                           f'{self.facts.model!r} does not segment')
    self.views()  # Checks the strong view's and the CutMix box's fields.

  def views(self):
    return {'labeled': strong_views(self.facts.strong_augment, self.params)}

  @property
  def labeled_multiple(self) -> int:
    return pair_multiple(self.params)

  def loss(self, params, state, batch, rngs, axis_name):
    return super().loss(params, state, mixed_labeled(batch), rngs, axis_name)
