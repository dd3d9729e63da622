"""Datasets (registered by name, config.data.name) and the input pipeline.

  from segae_jax import data
  ds = data.build(config.data)          # -> Dataset(train, test, image_shape, ...)
  it = data.TrainIterator(ds.train, 128, seed=0, preprocess=ds.preprocess)
"""
import dataclasses
from typing import Callable, Mapping, Sequence, Tuple

import numpy as np

from segae_jax.data.pipeline import ArraySource, TrainIterator, eval_batches, stack_examples
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
  sources = builder.as_data_source()
  # The whole split is 47 MB as uint8: reading it once makes batches ~100x faster than per-example
  # decoding from array_record.
  train, test = sources['train'], sources['test']
  if config.get('cache', True):
    train, test = ArraySource.from_data_source(train), ArraySource.from_data_source(test)
  binarize = bool(config.get('binarize', False))
  return Dataset(name='fashion_mnist', train=train, test=test, image_shape=(28, 28, 1),
                 num_classes=10, class_names=fm.CLASS_NAMES,
                 preprocess=lambda ex, rng: scale_images(ex, rng, binarize))


def build(config: Mapping) -> Dataset:
  """Loads the dataset named config['name'] (preparing it on first use).

  Raises:
    UserInputError: unknown name, or its files are missing or malformed.
  """
  return DATASETS.get(config['name'])(config)


__all__ = ['ArraySource', 'DATASETS', 'Dataset', 'TrainIterator', 'build', 'eval_batches',
           'scale_images', 'stack_examples']
