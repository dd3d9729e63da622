"""Datasets (registered by name, config.data.name) and the input pipeline.

  from segae_jax import data
  ds = data.build(config.data)          # -> Dataset(train, test, image_shape, ...)
  it = data.TrainIterator(ds.train, 128, seed=0, preprocess=ds.preprocess)
"""
import dataclasses
from typing import Callable, Mapping, Sequence, Tuple

import numpy as np

from segae_jax.data.pipeline import ArraySource, TrainIterator, eval_batches, stack_examples
from segae_jax.errors import UserInputError
from segae_jax.registry import Registry

DATASETS = Registry('dataset')


@dataclasses.dataclass
class Dataset:
  """A prepared dataset: random-access splits plus what the model and pipeline need to know.

  train, test: sources with __len__ and __getitems__ (numpy dicts; 'image' uint8 [h, w, c]).
  image_shape: (height, width, channels).
  preprocess: (examples, np.random.Generator) -> batch of float32 images in [0, 1] etc.
  """
  name: str
  train: object
  test: object
  image_shape: Tuple[int, int, int]
  num_classes: int
  class_names: Sequence[str]
  preprocess: Callable


def scale_images(examples, rng: np.random.Generator, binarize: bool = False):
  """uint8 'image' -> float32 in [0, 1].

  With `binarize`, 'image' becomes a fresh Bernoulli draw per pixel (dynamic binarisation,
  Salakhutdinov & Murray, ICML 2008), so the Bernoulli likelihood is exact, and the grayscale
  image is kept as 'clean_image' for PSNR/MSE.
  """
  batch = dict(examples)
  image = examples['image'].astype(np.float32) / 255.0
  if binarize:
    batch['clean_image'] = image
    image = (rng.random(image.shape, dtype=np.float32) < image).astype(np.float32)
  batch['image'] = image
  return batch


@DATASETS.register('fashion_mnist')
def _fashion_mnist(config: Mapping) -> Dataset:
  from segae_jax.data import fashion_mnist as fm  # Imports tfds only when used.
  builder = fm.prepare(config.get('idx_dir', ''), config.get('tfds_dir') or None)
  # The whole split is 47 MB as uint8: holding it in memory makes batches ~100x faster than
  # per-example decoding from array_record.
  if config.get('cache', True):
    splits = fm.decoded_splits(builder)
  else:
    splits = builder.as_data_source()
  train, test = splits['train'], splits['test']
  binarize = bool(config.get('binarize', False))
  return Dataset(name='fashion_mnist', train=train, test=test, image_shape=(28, 28, 1),
                 num_classes=10, class_names=fm.CLASS_NAMES,
                 preprocess=lambda ex, rng: scale_images(ex, rng, binarize))


@DATASETS.register('fashion_mnist_scenes')
def _fashion_mnist_scenes(config: Mapping) -> Dataset:
  from segae_jax.data import scenes
  return scenes.load(config)


@DATASETS.register('segmentation_folder')
def _segmentation_folder(config: Mapping) -> Dataset:
  from segae_jax.data import folder
  return folder.load(config)


@DATASETS.register('oxford_iiit_pet')
def _oxford_iiit_pet(config: Mapping) -> Dataset:
  from segae_jax.data import pets
  return pets.load(config)


def with_labeled_fraction(dataset: Dataset, fraction: float, seed: int) -> Dataset:
  """Semi-supervised training: keeps the segmentation masks of a `fraction` of the training
  images (chosen from `seed`, the same for every run with that seed) and marks the others with
  'labeled' = 0, so segmentation losses skip them while reconstruction terms still use them.

  Raises:
    UserInputError: the dataset has no masks or is not held in memory (config.data.cache).
  """
  train = dataset.train
  if not isinstance(train, ArraySource) or 'segmentation' not in train.arrays:
    raise UserInputError(f'config.labeled_fraction={fraction} needs a segmentation dataset held '
                         f'in memory; {dataset.name} has no masks or config.data.cache is off')
  n = len(train)
  labeled = np.zeros(n, np.float32)
  chosen = np.random.default_rng([seed, 0x5E6]).permutation(n)[:max(1, round(fraction * n))]
  labeled[chosen] = 1.0
  preprocess = dataset.preprocess

  def preprocess_keeping_flags(examples, rng):
    batch = preprocess({k: v for k, v in examples.items() if k != 'labeled'}, rng)
    if 'labeled' in examples:  # Training batches; the test split has every mask.
      batch['labeled'] = examples['labeled']
    return batch

  return dataclasses.replace(dataset, train=ArraySource({**train.arrays, 'labeled': labeled}),
                             preprocess=preprocess_keeping_flags)


def build(config: Mapping) -> Dataset:
  """Loads the dataset named config['name'] (preparing it on first use).

  Raises:
    UserInputError: unknown name, or its files are missing or malformed.
  """
  return DATASETS.get(config['name'])(config)


__all__ = ['ArraySource', 'DATASETS', 'Dataset', 'TrainIterator', 'build', 'eval_batches',
           'scale_images', 'stack_examples', 'with_labeled_fraction']
