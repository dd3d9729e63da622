"""A pixel-level segmentation head trained with no mask drawn by anyone: self-training on the
object classes that an autoencoder's codes give (segae_jax.tools.objects).

Round 1 trains a segmentation model on copy-paste scenes (segae_jax.tools.composites) of the
objects most likely to be single, each with the class its code was clustered into: every
pixel's class is known there, touching and occluding objects included. Round 2 trains afresh on
the real training images, with round 1's classes where it is confident (softmax probability of
the best object class >= head.threshold) inside the object foreground, background outside, and
the remaining foreground pixels ignored (the folder's ignore_label): self-training on pseudo-
labels (Lee, "Pseudo-Label", ICML 2013 workshop; Xie et al., "Self-training with Noisy Student",
CVPR 2020), whose confidence threshold FixMatch (Sohn et al., NeurIPS 2020) uses per pixel here.

Each round is an ordinary training run (segae_jax.training.train_and_evaluate of the config file
head.config, default the folder config, with head.overrides) on a folder dataset the head writes:
images as float32 TIFFs in the model's units (normalize='unit' keeps them as they are) and uint8
PNG masks. Everything lives in head.workdir, which the head owns (its pixel_head.json names what
it was made from): data folders are staged and renamed into place, and a stopped run resumes from
the last finished step of the last unfinished round.
"""
import json
import os
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np

from segae_jax.errors import UserInputError
from segae_jax.tools import common, composites, outputs

TOOL = 'pixel_head'
OWN_FILE = 'pixel_head.json'
IGNORE_LABEL = 255  # Pixels of unknown class in round 2's masks (config.data.ignore_label).


def write_folder(root: str, splits: Dict[str, Iterable[Tuple[np.ndarray, np.ndarray]]]) -> None:
  """A folder dataset (split='folders') written into the new folder `root`, staged and renamed
  (tools.outputs): images/<split>/<i>.tif (float32 [h, w, c], model units) and
  masks/<split>/<i>.png (uint8 [h, w] classes).

  Args:
    splits: {'train': pairs, 'test': pairs}, pairs of (image float32 [h, w, c], mask [h, w]).

  Raises:
    UserInputError: `root` exists and is not a previous output of the head, or the writing
      fails (tools.outputs.staged_folder).
  """
  import tifffile
  from PIL import Image
  with outputs.staged_folder(root, TOOL) as staging:
    for split, pairs in splits.items():
      os.makedirs(os.path.join(staging, 'images', split))
      os.makedirs(os.path.join(staging, 'masks', split))
      for i, (image, mask) in enumerate(pairs):
        tifffile.imwrite(os.path.join(staging, 'images', split, f'{i:06d}.tif'),
                         np.asarray(image, np.float32))
        Image.fromarray(np.asarray(mask, np.uint8)).save(
            os.path.join(staging, 'masks', split, f'{i:06d}.png'))


def composite_pairs(singles, shape: Sequence[int], count: int, max_objects: int,
                    rng: np.random.Generator, fill: np.ndarray):
  """`count` copy-paste scenes of 1..max_objects objects each (composites.compose), drawn in
  order from `rng`: (image float32 [h, w, c], classes uint8 [h, w]) each."""
  for _ in range(count):
    image, classes = composites.compose(singles, shape, int(rng.integers(1, max_objects + 1)),
                                        rng, fill)
    yield image, classes.astype(np.uint8)


def pseudo_masks(probabilities: np.ndarray, foreground: np.ndarray,
                 threshold: float) -> np.ndarray:
  """Round 2's masks from round 1's softmax.

  Args:
    probabilities: float32 [n, h, w, classes], softmax over the background (0) and the object
      classes.
    foreground: bool [n, h, w], the object pixels.
    threshold: an object pixel keeps its best object class when that class's probability,
      renormalised over the object classes, is at least this; otherwise IGNORE_LABEL.

  Returns:
    uint8 [n, h, w]: 0 off the objects, the best object class (>= 1) or IGNORE_LABEL on them.
  """
  objects = probabilities[..., 1:] / np.maximum(probabilities[..., 1:].sum(-1, keepdims=True),
                                                 1e-12)
  best = objects.argmax(-1) + 1
  confident = objects.max(-1) >= threshold
  return np.where(foreground, np.where(confident, best, IGNORE_LABEL), 0).astype(np.uint8)


def round_config(head, data_root: str, num_classes: int, image_shape: Sequence[int],
                 init_from: str, ignore: bool):
  """The training config of one round: head.config with the folder written at data_root,
  head.overrides, and the head's own fields (steps, seed, init_from).

  Raises:
    UserInputError: the config file cannot be loaded, or an override names a missing key or
      gives the wrong type (tools.sweep).
  """
  from segae_jax.tools import sweep
  config = sweep.load_config(head.config)
  fields = {'data.images_dir': os.path.join(data_root, 'images'),
            'data.masks_dir': os.path.join(data_root, 'masks'),
            'data.split': 'folders', 'data.num_classes': num_classes,
            'data.image_size': tuple(image_shape[:2]), 'data.channels': int(image_shape[-1]),
            'data.normalize': 'unit', 'data.ignore_label': IGNORE_LABEL if ignore else -1,
            'data.tfds_dir': data_root + '_tfds',
            'num_train_steps': head.steps, 'seed': head.seed, 'init_from': init_from,
            **{key: value for key, value in head.overrides}}
  return sweep.apply_overrides(config, fields)


def _finished(workdir: str, steps: int) -> bool:
  """Whether the training run in `workdir` wrote its results at `steps` (tools.sweep's test)."""
  from segae_jax.tools import sweep
  return sweep.finished_results(workdir, steps) is not None


class PixelHead:
  """The self-trained head as a label-free segmentation method: `fit`, then `regions`.

  Args:
    objects: a segae_jax.tools.objects.ObjectCodes (fitted by `fit` when not yet).
    head: the `head` block of the unsupervised config: workdir, config, overrides ((dotted key,
      value) pairs), steps, rounds (1 or 2), composites, test_composites, max_objects,
      threshold, seed, batch_size (of inference).
    init_from: the workdir whose weights start each round (the pixel autoencoder's; '' none).
    definition: what the head is made from (JSON-serialisable); a head.workdir holding another
      definition is refused.

  Raises:
    UserInputError: head.workdir is not the head's own (another definition, or a folder of
      something else).
  """

  def __init__(self, objects, head, init_from: str, definition: Dict[str, object]):
    self.objects = objects
    self.head = head
    self.init_from = init_from
    self.workdir = outputs.check_reused_folder(head.workdir, TOOL, OWN_FILE)
    self.definition = definition
    self.run = None
    self.inference, self.tiles = None, None  # Set by `restore`, for images of any size.
    own = os.path.join(self.workdir, OWN_FILE)
    if os.path.exists(own):
      with open(own, encoding='utf-8') as f:
        previous = json.load(f).get('definition')
      if previous != json.loads(json.dumps(definition)):
        raise UserInputError(f'{self.workdir} holds a pixel head made from another definition '
                             f'({own}); give a new config.head.workdir')

  def _train(self, index: int, data_root: str, image_shape, ignore: bool) -> str:
    from segae_jax import training
    workdir = os.path.join(self.workdir, f'round{index}')
    if not _finished(workdir, self.head.steps):
      config = round_config(self.head, data_root, self.objects.config.num_clusters + 1,
                            image_shape, self.init_from, ignore)
      config.lock()
      training.train_and_evaluate(config, workdir)
    return workdir

  def _round1_data(self, image_shape) -> str:
    root = os.path.join(self.workdir, 'round1_data')
    if not os.path.exists(root):
      rng = np.random.default_rng(self.head.seed)
      fill = self.objects.background
      make = lambda n: composite_pairs(self.objects.singles, image_shape, n,
                                       self.head.max_objects, rng, fill)
      write_folder(root, {'train': make(self.head.composites),
                          'test': make(self.head.test_composites)})
    return root

  def _round2_data(self, round1: str, images: np.ndarray) -> str:
    root = os.path.join(self.workdir, 'round2_data')
    if not os.path.exists(root):
      run = common.load_run(round1, 'latest')
      masks = pseudo_masks(run.infer(images, common.seg_probabilities, self.head.batch_size),
                           np.stack([ids > 0 for ids in self.objects.find(images)]),
                           self.head.threshold)
      held = min(self.head.test_composites, len(images) // 10)  # A held-out check of round 2.
      write_folder(root, {'train': zip(images[held:], masks[held:]),
                          'test': zip(images[:held], masks[:held])})
    return root

  def fit(self, image_batches: Iterable[np.ndarray], rng: np.random.Generator) -> None:
    """Fits the object codes on the images (float32 [b, h, w, c] batches, model units) when not
    yet, then trains the rounds (each resumed or skipped when finished); nothing once `restore`d
    (a folder's images of any size are segmented by the head trained on the split)."""
    if self.run is not None:
      return
    batches = list(image_batches)
    if self.objects.model is None:
      self.objects.fit(batches, rng)
    if not os.path.exists(os.path.join(self.workdir, OWN_FILE)):
      outputs.write_json(os.path.join(self.workdir, OWN_FILE), {'definition': self.definition},
                         TOOL, owned=True)
    shape = batches[0].shape[1:]
    workdir = self._train(1, self._round1_data(shape), shape, ignore=False)
    if self.head.rounds >= 2:
      workdir = self._train(2, self._round2_data(workdir, np.concatenate(batches)), shape,
                            ignore=True)
    self.run = common.load_run(workdir, 'latest')

  def restore(self, inference: common.Inference) -> None:
    """Loads the finished head of head.workdir without training anything (the --input route,
    images of any size: larger than the head's input tiled by `inference`, others resized).

    Raises:
      UserInputError: head.workdir holds no finished final round, or a bad tile size.
    """
    final = os.path.join(self.workdir, f'round{2 if self.head.rounds >= 2 else 1}')
    if not _finished(final, self.head.steps):
      raise UserInputError(f'{final}: no finished pixel head; train it first by running the '
                           'command on the training split (without --input)')
    self.run = common.load_run(final, 'latest')
    self.inference = inference
    self.tiles = self.run.make_tiling(inference, self.head.batch_size)

  def _logits(self, image: np.ndarray) -> np.ndarray:
    """float32 [h, w, c] of any size -> float32 logits [h, w, classes]: tiled (larger than the
    head's input), or of the image resized to the input and resized back (bilinear)."""
    from segae_jax.data import sizing
    infer = lambda tiles: self.run.infer(tiles, common.seg_logits, self.head.batch_size)
    h, w = image.shape[:2]
    if self.run.uses_tiles(self.inference, h, w):
      return np.asarray(self.tiles.apply(infer, image))
    logits = infer(sizing.resize_image(image, self.run.input_size)[None])[0]
    return sizing.resize_image(np.asarray(logits, np.float32), (h, w))

  def regions(self, images: np.ndarray) -> np.ndarray:
    """float32 images [b, h, w, c] -> int64 class maps [b, h, w]: the head's best object class
    on the object foreground (objects.find), 0 elsewhere."""
    if tuple(images.shape[1:3]) == tuple(self.run.input_size):
      logits = np.asarray(self.run.infer(images, common.seg_logits, self.head.batch_size))
    else:
      logits = np.stack([self._logits(image) for image in images])
    foreground = np.stack([ids > 0 for ids in self.objects.find(images)])
    return np.where(foreground, logits[..., 1:].argmax(-1) + 1, 0).astype(np.int64)
