"""Datasets (registered by name, config.data.name) and the input pipeline.

  from segae_jax import data
  ds = data.build(config.data)          # -> Dataset(train, test, image_shape, ...)
  it = data.TrainIterator(ds.train, 128, seed=0, preprocess=ds.preprocess, num_workers=2)
  it = data.train_inputs(config, ds, views, num_local_devices)   # what the training loop reads

Modules: dataset.py (Dataset), sources.py (splits in memory, streamed, subsets), plans.py (which
examples each batch holds), pipeline.py (grain: TrainIterator, eval_batches), augment.py and
views.py (the training views), inputs.py (the inputs of a run, assembled from its config), and
the builders (fashion_mnist.py, scenes.py, folder.py, image_folder.py, pets.py).
"""
import functools
from typing import Mapping

from segae_jax.data.dataset import (DATASETS, Dataset, KeepingFlags, build, labeled_subset,
                                    scale_images, with_labeled_fraction)
from segae_jax.data.inputs import (configured_image_size, eval_inputs, has_pool, run_dataset,
                                   train_inputs)
from segae_jax.data.pipeline import (TrainIterator, check_num_workers, check_unlabeled_per_batch,
                                     eval_batches)
from segae_jax.data.plans import ExampleRngs, eval_rngs
from segae_jax.data.sources import (ArraySource, DataError, StreamedSource, Subset, WithFeature,
                                    cache_mode, hold, stack_examples, unit_float)

@DATASETS.register('fashion_mnist')
def _fashion_mnist(config: Mapping) -> Dataset:
  from segae_jax.data import fashion_mnist as fm  # Imports tfds only when used.
  builder = fm.prepare(config.get('idx_dir', ''), config.get('tfds_dir') or None)
  # The whole split is 47 MB as uint8 ('auto' holds it): in memory, batches are ~100x faster
  # than per-example decoding from array_record.
  if cache_mode(config.get('cache', 'auto')) == 'stream':
    splits = {k: StreamedSource(v) for k, v in builder.as_data_source().items()}
  else:
    splits = fm.decoded_splits(builder)
  binarize = bool(config.get('binarize', False))
  return Dataset(name='fashion_mnist', train=splits['train'], test=splits['test'],
                 image_shape=(28, 28, 1), num_classes=10, class_names=fm.CLASS_NAMES,
                 preprocess=functools.partial(scale_images, binarize=binarize))


@DATASETS.register('fashion_mnist_scenes')
def _fashion_mnist_scenes(config: Mapping) -> Dataset:
  from segae_jax.data import scenes
  return scenes.load(config)


@DATASETS.register('segmentation_folder')
def _segmentation_folder(config: Mapping) -> Dataset:
  from segae_jax.data import folder
  return folder.load(config)


@DATASETS.register('image_folder')
def _image_folder(config: Mapping) -> Dataset:
  from segae_jax.data import image_folder
  return image_folder.load(config)


@DATASETS.register('oxford_iiit_pet')
def _oxford_iiit_pet(config: Mapping) -> Dataset:
  from segae_jax.data import pets
  return pets.load(config)


__all__ = ['ArraySource', 'DATASETS', 'DataError', 'Dataset', 'ExampleRngs', 'KeepingFlags',
           'StreamedSource', 'Subset', 'TrainIterator', 'WithFeature', 'build', 'cache_mode',
           'check_num_workers', 'check_unlabeled_per_batch', 'configured_image_size',
           'eval_batches', 'eval_inputs', 'eval_rngs', 'has_pool', 'hold', 'labeled_subset',
           'run_dataset', 'scale_images', 'stack_examples', 'train_inputs', 'unit_float',
           'with_labeled_fraction']
