"""The inputs of a training run, assembled from its config: the dataset with its labelled share
and unlabelled pool, the training batches (augmentation, pools, the objective's views) and the
evaluation batches. The training loop only iterates over what these return.

A training batch is {'image': float32 [n, h, w, c] (the model input), 'segmentation', ...} for the
labelled examples (every example when there is no pool), plus, with a pool, 'unlabeled': {'image':
the weak view, and the views the objective asked for} of the pool's share; see segae_jax.batch
(the contract, checked on the first batch), data.views and segae_jax.training.objectives.
"""
import dataclasses
from typing import ClassVar, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from segae_jax import batch as batch_lib
from segae_jax.batch import LABELED, PARTS, UNLABELED
from segae_jax.data import augment
from segae_jax.data.dataset import Dataset, build, with_labeled_fraction
from segae_jax.data.pipeline import Batch, TrainIterator, eval_batches
from segae_jax.data.sources import Subset
from segae_jax.data.views import InKeyOutKey, View, promised_keys, with_views


@dataclasses.dataclass(frozen=True, kw_only=True)
class HiddenMasks(InKeyOutKey):
  """Moves a pool example's hidden mask, after the weak view moved it with its image, from
  'segmentation' (which a loss would learn from) to 'hidden_segmentation' (which objectives read
  only to report how right their pseudo-labels are: config.data.monitor_hidden_masks). Draws
  nothing."""
  inkey: str = 'segmentation'
  outkey: str = 'hidden_segmentation'
  kind: ClassVar[str] = 'labels'

  def __call__(self, batch, rngs):
    batch = dict(batch)
    batch[self.outkey] = batch.pop(self.inkey)
    return batch


def has_pool(config: Mapping) -> bool:
  """Whether a run trains with an unlabelled pool: config.data.unlabeled_dir (real unlabelled
  images), or config.labeled_fraction < 1 with config.data.unlabeled_per_batch > 0 (the training
  images whose masks are hidden become the pool)."""
  data_config = config['data']
  return bool(data_config.get('unlabeled_dir', '')) or (
      config['labeled_fraction'] < 1.0 and data_config.get('unlabeled_per_batch', 0) > 0)


def hidden_mask_pool(config: Mapping) -> bool:
  """Whether the run's pool carries its hidden masks as 'hidden_segmentation' (monitoring only:
  config.data.monitor_hidden_masks, with a pool made of a labelled dataset's hidden-mask images;
  a pool of config.data.unlabeled_dir has no masks to carry)."""
  data_config = config['data']
  return (bool(data_config.get('monitor_hidden_masks', False)) and has_pool(config)
          and not data_config.get('unlabeled_dir', ''))


def configured_image_size(data_config: Mapping) -> Optional[Tuple[int, int]]:
  """The training images' (height, width) where config.data names it (image_size, the scenes'
  canvas_size, Fashion-MNIST's 28 x 28), else None (known once the dataset is built)."""
  if data_config.get('image_size'):
    return tuple(int(s) for s in data_config['image_size'])
  if data_config.get('canvas_size'):
    return (int(data_config['canvas_size']),) * 2
  return (28, 28) if data_config.get('name') == 'fashion_mnist' else None


def run_dataset(config: Mapping) -> Dataset:
  """data.build(config.data) with the labelled fraction applied: with a pool (has_pool), the hidden
  masks' images become the dataset's unlabelled pool; with config.labeled_only they are dropped
  (the run trains on the labelled images alone, e.g. a fine-tuning or a supervised baseline);
  otherwise they stay in the training split flagged 'labeled' = 0
  (data.dataset.with_labeled_fraction). config.data.drop_masks keeps the images alone, in every
  split.

  Raises:
    UserInputError: as `build`, or a labelled fraction of a dataset without masks.
  """
  dataset = build(config['data'])
  if config['data'].get('drop_masks', False):
    # An encoder trained for label-free segmentation: no batch of the run carries a mask, so no
    # loss, metric or view can read one (tools.unsupervised's claim, tested).
    dataset = dataclasses.replace(
        dataset, train=Subset(dataset.train, np.arange(len(dataset.train)), keys=('image',)),
        test=Subset(dataset.test, np.arange(len(dataset.test)), keys=('image',)))
  if config['labeled_fraction'] < 1.0:
    labeled_only = bool(config.get('labeled_only', False))
    dataset = with_labeled_fraction(dataset, config['labeled_fraction'], config['seed'],
                                    as_pool=has_pool(config) or labeled_only,
                                    pool_masks=hidden_mask_pool(config) and not labeled_only)
    if labeled_only:
      dataset = dataclasses.replace(dataset, unlabeled=None)
  return dataset


def train_inputs(config: Mapping, dataset: Dataset, views: Mapping[str, Sequence[View]],
                 num_local_devices: Optional[int], process_index: int = 0,
                 process_count: int = 1) -> TrainIterator:
  """The training batches of a run: config.batch_size examples per step over all processes
  (config.data.unlabeled_per_batch of them from the pool), each part augmented as
  config.data.augment says (the weak view) and given its `views` ({'labeled': [...],
  'unlabeled': [...]}, data.views). The first batch is checked against the batch contract with
  the keys the views promise (segae_jax.batch.check_training_batch).

  Raises:
    UserInputError: a bad batch share, worker count or augmentation, a batch larger than the
      labelled split, or two views of a part writing one key; at the first batch, BatchError: a
      view that did not write its key, or wrote it with another shape or dtype.
  """
  unknown = sorted(set(views) - set(PARTS))
  if unknown:
    raise ValueError(f'views for unknown batch parts {unknown}; parts: {PARTS}')
  data_config = config['data']
  weak = augment.with_augmentation(dataset.preprocess, data_config.get('augment', {}),
                                   batch_lib.spatial_shape(dataset.image_shape, leading=0),
                                   dataset.resize, clip=dataset.normalization.mode == 'unit')
  parts = (LABELED,) if dataset.unlabeled is None else PARTS
  views = dict(views)
  if hidden_mask_pool(config):  # First: it draws nothing, and the views after it see no mask.
    views[UNLABELED] = [HiddenMasks(), *views.get(UNLABELED, ())]
  required = {part: {'image': None, **promised_keys(views.get(part, ()))} for part in parts}
  pool_preprocess = None
  if dataset.unlabeled is not None:
    pool_preprocess = with_views(weak, views.get(UNLABELED, ()))
  return TrainIterator(
      dataset.train, config['batch_size'], config['seed'],
      with_views(weak, views.get(LABELED, ())), process_index=process_index,
      process_count=process_count, num_local_devices=num_local_devices,
      num_workers=data_config.get('num_workers', 0), unlabeled=dataset.unlabeled,
      unlabeled_per_batch=data_config.get('unlabeled_per_batch', 0),
      unlabeled_preprocess=pool_preprocess, required=required)


def eval_inputs(config: Mapping, dataset: Dataset, split: str,
                num_local_devices: Optional[int], process_index: int = 0,
                process_count: int = 1) -> Iterator[Batch]:
  """Every example of `split` once, in config.eval_batch_size batches padded with a 'valid' flag
  (data.pipeline.eval_batches), as evaluation reads them."""
  return eval_batches(getattr(dataset, split), config['eval_batch_size'], dataset.preprocess,
                      seed=config['seed'], process_index=process_index,
                      process_count=process_count, num_local_devices=num_local_devices,
                      num_workers=config['data'].get('num_workers', 0))
