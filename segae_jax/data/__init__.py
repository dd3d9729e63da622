"""Datasets (registered by name, config.data.name) and the input pipeline.

  from segae_jax import data
  ds = data.build(config.data)          # -> Dataset(train, test, image_shape, ...)
  it = data.TrainIterator(ds.train, 128, seed=0, preprocess=ds.preprocess, num_workers=2)
"""
import dataclasses
import functools
from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

from segae_jax.data.pipeline import (ArraySource, DataError, ExampleRngs, Pools, StreamedSource,
                                     TrainIterator, WithFeature, cache_mode, check_num_workers,
                                     check_unlabeled_per_batch, eval_batches, eval_rngs, hold,
                                     stack_examples, unit_float)
from segae_jax.errors import UserInputError
from segae_jax.registry import Registry

DATASETS = Registry('dataset')


@dataclasses.dataclass
class Dataset:
  """A prepared dataset: random-access splits plus what the model and pipeline need to know.

  train, test: sources with __len__ and __getitems__ (numpy dicts; 'image' uint8 [h, w, c]):
    an ArraySource held in memory or a StreamedSource read from disk (config.data.cache).
  image_shape: (height, width, channels).
  num_classes: segmentation classes; 0 for a dataset without masks (image_folder).
  preprocess: (examples, one np.random.Generator per example) -> batch of float32 images in
    [0, 1] etc.; a picklable callable (grain runs it in worker processes).
  unlabeled: an unlabelled training pool ('image' only) for semi-supervised training, or None.
  resize: how examples of another size reach image_shape ('resize' or 'center_crop',
    data.sizing); only datasets stored at the images' own sizes have such examples.
  sizes: for those, {split: {'count', 'min_height', 'min_width', 'max_height', 'max_width',
    'pixels'}} (data.local.size_summary); None for datasets of one fixed size.
  """
  name: str
  train: object
  test: object
  image_shape: Tuple[int, int, int]
  num_classes: int
  class_names: Sequence[str]
  preprocess: Callable
  unlabeled: Optional[object] = None
  resize: str = 'resize'
  sizes: Optional[Mapping[str, Mapping[str, int]]] = None


def scale_images(examples, rngs: Sequence[np.random.Generator], binarize: bool = False):
  """uint8 'image' [batch, h, w, c] -> float32 in [0, 1].

  With `binarize`, 'image' becomes a fresh Bernoulli draw per pixel (dynamic binarisation,
  Salakhutdinov & Murray, ICML 2008), so the Bernoulli likelihood is exact, and the grayscale
  image is kept as 'clean_image' for PSNR/MSE. Example i draws from rngs[i].
  """
  batch = dict(examples)
  image = unit_float(examples['image'])
  if binarize:
    batch['clean_image'] = image
    noise = np.stack([rng.random(image.shape[1:], dtype=np.float32)
                      for rng in rngs[:len(image)]])
    image = (noise < image).astype(np.float32)
  batch['image'] = image
  return batch


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


def with_labeled_fraction(dataset: Dataset, fraction: float, seed: int) -> Dataset:
  """Semi-supervised training: keeps the segmentation masks of a `fraction` of the training
  images (chosen from `seed`, the same for every run with that seed) and marks the others with
  'labeled' = 0, so segmentation losses skip them while reconstruction terms still use them.

  Raises:
    UserInputError: the dataset has no masks.
  """
  train = dataset.train
  if 'segmentation' not in train.__getitems__([0]):
    raise UserInputError(f'config.labeled_fraction={fraction} needs a segmentation dataset; '
                         f'{dataset.name} has no masks')
  n = len(train)
  labeled = np.zeros(n, np.float32)
  chosen = np.random.default_rng([seed, 0x5E6]).permutation(n)[:max(1, round(fraction * n))]
  labeled[chosen] = 1.0
  return dataclasses.replace(dataset, train=WithFeature(train, 'labeled', labeled),
                             preprocess=KeepingFlags(dataset.preprocess))


@dataclasses.dataclass(frozen=True)
class KeepingFlags:
  """preprocess, passing the 'labeled' flags of training batches through untouched (the test
  split has every mask and no flags). A class, so grain can pickle it to its workers."""
  preprocess: Callable

  def __call__(self, examples, rngs):
    batch = self.preprocess({k: v for k, v in examples.items() if k != 'labeled'}, rngs)
    if 'labeled' in examples:
      batch['labeled'] = examples['labeled']
    return batch


def build(config: Mapping) -> Dataset:
  """Loads the dataset named config['name'] (preparing it on first use).

  Raises:
    UserInputError: unknown name, or its files are missing or malformed.
  """
  return DATASETS.get(config['name'])(config)


__all__ = ['ArraySource', 'DATASETS', 'DataError', 'Dataset', 'ExampleRngs', 'KeepingFlags',
           'Pools', 'StreamedSource', 'TrainIterator', 'WithFeature', 'build', 'cache_mode',
           'check_num_workers', 'check_unlabeled_per_batch', 'eval_batches', 'eval_rngs', 'hold',
           'scale_images', 'stack_examples', 'unit_float', 'with_labeled_fraction']
