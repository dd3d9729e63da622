"""Augmentation for segmentation: the image and its mask move together.

Operates on host numpy batches inside the input pipeline (in grain's worker processes when
config.data.num_workers > 0). Example i of a batch draws only from `rngs[i]`, the pipeline's
generator for that example (data.pipeline.ExampleRngs), so an augmented batch is the same for any
number of workers and after any resume.
"""
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from segae_jax import batch as batch_lib
from segae_jax.data import sizing
from segae_jax.data.sizing import Size


Rngs = Sequence[np.random.Generator]


def random_flip(batch, rngs: Rngs):
  """Mirrors each example left-right with probability 1/2 (image and 'segmentation')."""
  flip = np.array([rng.random() < 0.5 for rng in rngs[:len(batch['image'])]], bool)
  out = dict(batch)
  for key in ('image', 'segmentation', 'clean_image'):
    if key in batch:
      out[key] = batch[key].copy()
      out[key][flip] = batch[key][flip, :, ::-1]  # Copies only the mirrored examples.
  return out


def random_resized_crop(batch, rngs: Rngs, min_scale: float, size: Optional[Size] = None,
                        mode: str = 'resize'):
  """Random crops of uint8 examples, resized to `size` (default: the images' own size, for
  datasets of one fixed size): with mode 'resize' a window covering a fraction in [min_scale, 1]
  of each image's area, with 'center_crop' a window of `size` at a random position (no
  resampling); see data.sizing. Masks follow their images with the same window."""
  images = batch['image']
  return sizing.fit(batch, size or batch_lib.spatial_shape(images), mode, rngs, min_scale)


def brightness_contrast(batch, rngs: Rngs, brightness: float, contrast: float,
                        clip: bool = True):
  """Float images: x -> (x - mean) * c + mean + b with c ~ U[1 - contrast, 1 + contrast] and
  b ~ U[-brightness, brightness] per image, clipped to [0, 1] with `clip` (images in [0, 1]; not
  standardised ones, data.normalize). Masks are unchanged."""
  images = batch['image']
  n = len(images)
  draws = np.array([(rng.uniform(1 - contrast, 1 + contrast),
                     rng.uniform(-brightness, brightness)) for rng in rngs[:n]],
                   np.float32).reshape((n, 2))
  c, b = (batch_lib.per_example(draws[:, i], images) for i in (0, 1))
  mean = images.mean(axis=batch_lib.example_axes(images), keepdims=True)
  images = (images - mean) * c + mean + b
  return dict(batch, image=np.clip(images, 0.0, 1.0) if clip else images)


def with_augmentation(preprocess: Callable, config: Mapping, size: Optional[Size] = None,
                      mode: str = 'resize', clip: bool = True) -> Callable:
  """Wraps a dataset's preprocess (uint8 examples -> float batch) with the augmentations that
  `config` turns on: flip (bool), crop_min_scale (< 1 enables random resized crop),
  brightness and contrast (> 0 enable them). Returns preprocess itself when all are off.

  `size` and `mode` are the dataset's (the (height, width) of Dataset.image_shape,
  Dataset.resize) for datasets stored at the images' own sizes: the crop then goes from the
  image's own size straight to `size`, and with mode 'center_crop' a crop is a window of `size`
  at a random position. `clip`: brightness/contrast keep images in [0, 1] (False for
  standardised inputs).
  """
  flip = bool(config.get('flip', False))
  crop = float(config.get('crop_min_scale', 1.0))
  brightness, contrast = float(config.get('brightness', 0.0)), float(config.get('contrast', 0.0))
  # A crop-only dataset's training crop is always random (its evaluation takes the centre).
  crop_only = mode == 'center_crop' and size is not None
  if not (flip or crop < 1.0 or brightness > 0 or contrast > 0 or crop_only):
    return preprocess
  return Augmented(preprocess, flip, crop, brightness, contrast, size, mode, clip)


class Augmented:
  """preprocess with augmentation around it (a class, not a closure: grain pickles it to its
  worker processes). Each example's draws come in a fixed order from its own generator: crop,
  flip, the dataset's own (binarisation), then brightness/contrast."""

  def __init__(self, preprocess: Callable, flip: bool, crop: float, brightness: float,
               contrast: float, size: Optional[Size] = None, mode: str = 'resize',
               clip: bool = True):
    self.preprocess, self.flip, self.crop, self.clip = preprocess, flip, crop, clip
    self.brightness, self.contrast = brightness, contrast
    self.size, self.mode = (None if size is None else tuple(size)), mode

  def __call__(self, examples, rngs: Rngs):
    if self.crop < 1.0 or (self.mode == 'center_crop' and self.size is not None):
      examples = random_resized_crop(examples, rngs, self.crop, self.size, self.mode)
    elif self.size is not None:
      examples = sizing.fit(examples, self.size, self.mode)
    if self.flip:
      examples = random_flip(examples, rngs)
    batch = self.preprocess(examples, rngs)
    if self.brightness > 0 or self.contrast > 0:
      batch = brightness_contrast(batch, rngs, self.brightness, self.contrast, self.clip)
    return batch
