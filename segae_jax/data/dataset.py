"""A prepared dataset (Dataset) and what every builder shares: the scaling of uint8 images and
the labelled fraction of a split.

Builders (fashion_mnist.py, scenes.py, folder.py, image_folder.py, pets.py) import this module;
segae_jax.data registers them by name.
"""
import dataclasses
from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

from segae_jax.data.normalize import Normalization
from segae_jax.data.sources import Subset, WithFeature
from segae_jax.errors import UserInputError
from segae_jax.registry import Registry

# name -> builder(config.data) -> Dataset; segae_jax.data registers the builders.
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
  normalization: how `preprocess` makes stored pixels the model's input (data.normalize); runs
    record it, so that predict, evaluate and an export apply the same one.
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
  normalization: Normalization = Normalization()


def scale_images(examples, rngs: Sequence[np.random.Generator], binarize: bool = False,
                 normalization: Normalization = Normalization()):
  """'image' [batch, h, w, c] -> float32 by `normalization` (the default: uint8 -> [0, 1]).

  With `binarize`, 'image' becomes a fresh Bernoulli draw per pixel (dynamic binarisation,
  Salakhutdinov & Murray, ICML 2008), so the Bernoulli likelihood is exact, and the grayscale
  image is kept as 'clean_image' for PSNR/MSE. Example i draws from rngs[i].
  """
  batch = dict(examples)
  image = normalization(examples['image'])
  if binarize:
    batch['clean_image'] = image
    noise = np.stack([rng.random(image.shape[1:], dtype=np.float32)
                      for rng in rngs[:len(image)]])
    image = (noise < image).astype(np.float32)
  batch['image'] = image
  return batch


def labeled_subset(num_examples: int, fraction: float, seed: int) -> np.ndarray:
  """The sorted indices of the `fraction` of `num_examples` training examples whose masks a run
  with config.labeled_fraction=fraction and config.seed=seed keeps (at least one), the same for
  every run and every objective with that seed."""
  chosen = np.random.default_rng([seed, 0x5E6]).permutation(num_examples)
  return np.sort(chosen[:max(1, round(fraction * num_examples))])


def with_labeled_fraction(dataset: Dataset, fraction: float, seed: int,
                          as_pool: bool = False, pool_masks: bool = False) -> Dataset:
  """Semi-supervised training on a fully labelled dataset: keeps the segmentation masks of a
  `fraction` of the training images (labeled_subset) and hides the others' masks.

  Without `as_pool` the hidden-mask images stay in the training split, flagged 'labeled' = 0
  (float32 per example), so segmentation losses skip them while the other terms still use them.
  With `as_pool` they become the dataset's unlabelled pool ('image' only; with `pool_masks` also
  their 'segmentation', which data.inputs moves to 'hidden_segmentation' after the weak view, so
  that a method can report how right its pseudo-labels are and no loss can learn from them) and
  the training split holds the labelled images alone, as with a real pool
  (config.data.unlabeled_dir).

  Raises:
    UserInputError: the dataset has no masks.
  """
  train = dataset.train
  if 'segmentation' not in train.__getitems__([0]):
    raise UserInputError(f'config.labeled_fraction={fraction} needs a segmentation dataset; '
                         f'{dataset.name} has no masks')
  n = len(train)
  chosen = labeled_subset(n, fraction, seed)
  if as_pool:
    hidden = np.setdiff1d(np.arange(n), chosen)
    return dataclasses.replace(dataset, train=Subset(train, chosen),
                               unlabeled=Subset(train, hidden, keys=('image', 'segmentation')
                                                if pool_masks else ('image',)))
  labeled = np.zeros(n, np.float32)
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
