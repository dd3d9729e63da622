"""Augmentation for segmentation: the image and its mask move together.

Operates on host numpy batches inside the input pipeline (in grain's worker processes when
config.data.num_workers > 0). Example i of a batch draws only from `rngs[i]`, the pipeline's
generator for that example (data.pipeline.ExampleRngs), so an augmented batch is the same for any
number of workers and after any resume.
"""
from typing import Callable, Mapping, Sequence

import numpy as np


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


def _opencv():
  """cv2, imported on the first crop (most runs never crop; the import takes about 0.1 s), with
  one thread per process: the pipeline's parallelism is grain's workers, the other cores XLA's."""
  import cv2  # pylint: disable=import-outside-toplevel
  cv2.setNumThreads(1)
  return cv2


def random_resized_crop(batch, rngs: Rngs, min_scale: float):
  """Crops a random square-ish box covering a fraction in [min_scale, 1] of each image's area and
  resizes it back to the image's size (image bilinear, mask nearest neighbour with pixel centres
  aligned, both with OpenCV: 7x faster than Pillow's resize on 256x256 RGB here); expects uint8
  images [batch, height, width, channels] and masks [batch, height, width]."""
  cv2 = _opencv()
  images, masks = batch['image'], batch.get('segmentation')
  n, h, w = images.shape[:3]
  out_images, out_masks = np.empty_like(images), None if masks is None else np.empty_like(masks)
  for i, rng in zip(range(n), rngs):
    scale = rng.uniform(min_scale, 1.0)
    ch, cw = max(1, round(h * np.sqrt(scale))), max(1, round(w * np.sqrt(scale)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = (slice(top, top + ch), slice(left, left + cw))
    resized = cv2.resize(images[i][window], (w, h), interpolation=cv2.INTER_LINEAR)
    out_images[i] = resized.reshape(images.shape[1:])
    if masks is not None:
      out_masks[i] = cv2.resize(masks[i][window], (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
  out = dict(batch, image=out_images)
  if masks is not None:
    out['segmentation'] = out_masks
  return out


def brightness_contrast(batch, rngs: Rngs, brightness: float, contrast: float):
  """Float images in [0, 1]: x -> (x - mean) * c + mean + b with c ~ U[1 - contrast, 1 + contrast]
  and b ~ U[-brightness, brightness] per image, clipped to [0, 1]. Masks are unchanged."""
  images = batch['image']
  n = len(images)
  shape = (n,) + (1,) * (images.ndim - 1)
  draws = np.array([(rng.uniform(1 - contrast, 1 + contrast),
                     rng.uniform(-brightness, brightness)) for rng in rngs[:n]],
                   np.float32).reshape((n, 2))
  c, b = draws[:, 0].reshape(shape), draws[:, 1].reshape(shape)
  mean = images.mean(axis=tuple(range(1, images.ndim)), keepdims=True)
  return dict(batch, image=np.clip((images - mean) * c + mean + b, 0.0, 1.0))


def with_augmentation(preprocess: Callable, config: Mapping) -> Callable:
  """Wraps a dataset's preprocess (uint8 examples -> float batch) with the augmentations that
  `config` turns on: flip (bool), crop_min_scale (< 1 enables random resized crop),
  brightness and contrast (> 0 enable them). Returns preprocess itself when all are off."""
  flip = bool(config.get('flip', False))
  crop = float(config.get('crop_min_scale', 1.0))
  brightness, contrast = float(config.get('brightness', 0.0)), float(config.get('contrast', 0.0))
  if not (flip or crop < 1.0 or brightness > 0 or contrast > 0):
    return preprocess

  return Augmented(preprocess, flip, crop, brightness, contrast)


class Augmented:
  """preprocess with augmentation around it (a class, not a closure: grain pickles it to its
  worker processes). Each example's draws come in a fixed order from its own generator: crop,
  flip, the dataset's own (binarisation), then brightness/contrast."""

  def __init__(self, preprocess: Callable, flip: bool, crop: float, brightness: float,
               contrast: float):
    self.preprocess, self.flip, self.crop = preprocess, flip, crop
    self.brightness, self.contrast = brightness, contrast

  def __call__(self, examples, rngs: Rngs):
    if self.crop < 1.0:
      examples = random_resized_crop(examples, rngs, self.crop)
    if self.flip:
      examples = random_flip(examples, rngs)
    batch = self.preprocess(examples, rngs)
    if self.brightness > 0 or self.contrast > 0:
      batch = brightness_contrast(batch, rngs, self.brightness, self.contrast)
    return batch
