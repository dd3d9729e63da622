"""Fashion-MNIST scenes: several real Fashion-MNIST items pasted on a larger canvas.

A segmentation and detection dataset made offline from the real Fashion-MNIST images, the way
M2NIST (multi-digit MNIST segmentation) was built. Each scene holds 1 to 4 (by default) items,
each rescaled and placed at random, later items occluding earlier ones, with a semantic map, an
instance map and one tight box and class label per visible item.

The masks are DERIVED from the pixel values, not hand-drawn: an item's mask is `pixel > 0` on its
original 28x28 image, with the holes inside the item filled (scipy.ndimage.binary_fill_holes, so
e.g. the inside of a bag's handle counts as bag), then resized with nearest neighbour. Fashion-MNIST
backgrounds are exactly 0, so this gives clean garment outlines, but it is not human annotation.

Train scenes use only images of the Fashion-MNIST train split and test scenes only images of its
test split, so no test garment is ever seen in training. Scene i of a split is a pure function of
(seed, split, i): `np.random.default_rng([seed, split_id, i])` draws it, independently of the other
scenes and of the order they are generated in.

  builder = scenes.prepare(scenes.ScenesConfig(num_train=10_000, seed=0))
  example = scenes.load_examples(builder, 'test')[0]   # numpy dict, objects included
  dataset = scenes.load({'canvas_size': 64})           # segae_jax.data.Dataset for training
"""
import dataclasses
import numbers
import os
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
import tensorflow_datasets as tfds

from segae_jax.data import fashion_mnist as fm
from segae_jax.data.dataset import Dataset
from segae_jax.data.sources import hold, unit_float
from segae_jax.data.info import LocalDatasetInfo
from segae_jax.errors import UserInputError

NAME = 'fashion_mnist_scenes'
ITEM_SIZE = 28  # Fashion-MNIST images are 28x28.
# Mixed into each scene's seed so train and test scenes with the same index differ.
SPLIT_IDS = {'train': 0, 'test': 1}
# uint8 instance ids: 0 is background, so at most 255 objects per scene.
MAX_INSTANCES = 255


def _check_int(field: str, value: Any, minimum: int) -> int:
  # bool is an int subclass; True as a canvas size is a config mistake, not 1.
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise UserInputError(f'fashion_mnist_scenes {field}={value!r}: expected an integer >= {minimum}')
  return int(value)


def _check_float(field: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < np.inf:
    raise UserInputError(f'fashion_mnist_scenes {field}={value!r}: expected a finite number > 0')
  return float(value)


@dataclasses.dataclass(eq=False)
class ScenesConfig(tfds.core.BuilderConfig):
  """The parameters of a scenes dataset; its `name` (the tfds config folder) encodes them all.

  Attributes:
    canvas_size: S, the scenes' height and width in pixels.
    num_train, num_test: number of scenes per split.
    min_objects, max_objects: items per scene, drawn uniformly from [min_objects, max_objects]
      before occlusion (a fully occluded item is painted but gets no `objects` entry).
    min_scale, max_scale: each item is resized from 28x28 to round(28 * scale) pixels, scale drawn
      uniformly from [min_scale, max_scale).
    seed: scene randomness; scene i of a split is drawn from default_rng([seed, split_id, i]).

  Raises:
    UserInputError: a non-positive size or count, min_objects > max_objects, more than 255 objects
      (uint8 instance ids), min_scale > max_scale, an item shrinking to 0 pixels, or
      28 * max_scale > canvas_size (the item would not fit); the message names the field.
  """
  # Derived from the parameters in __post_init__, never given: two configs share a prepared
  # folder exactly when they describe the same scenes.
  name: str = dataclasses.field(default='', init=False)
  canvas_size: int = 64
  num_train: int = 10_000
  num_test: int = 2_000
  min_objects: int = 1
  max_objects: int = 4
  min_scale: float = 0.75
  max_scale: float = 1.5
  seed: int = 0

  def __post_init__(self):
    self.canvas_size = _check_int('canvas_size', self.canvas_size, 1)
    self.num_train = _check_int('num_train', self.num_train, 1)
    self.num_test = _check_int('num_test', self.num_test, 1)
    self.min_objects = _check_int('min_objects', self.min_objects, 1)
    self.max_objects = _check_int('max_objects', self.max_objects, 1)
    self.seed = _check_int('seed (data key scenes_seed)', self.seed, 0)
    self.min_scale = _check_float('min_scale', self.min_scale)
    self.max_scale = _check_float('max_scale', self.max_scale)
    if self.max_objects < self.min_objects:
      raise UserInputError(f'fashion_mnist_scenes max_objects={self.max_objects}: expected >= '
                           f'min_objects={self.min_objects}')
    if self.max_objects > MAX_INSTANCES:
      raise UserInputError(f'fashion_mnist_scenes max_objects={self.max_objects}: expected <= '
                           f'{MAX_INSTANCES} (instance ids are uint8)')
    if self.max_scale < self.min_scale:
      raise UserInputError(f'fashion_mnist_scenes max_scale={self.max_scale}: expected >= '
                           f'min_scale={self.min_scale}')
    if item_size(self.min_scale) < 1:
      raise UserInputError(f'fashion_mnist_scenes min_scale={self.min_scale}: expected '
                           f'round({ITEM_SIZE} * min_scale) >= 1 pixel')
    if ITEM_SIZE * self.max_scale > self.canvas_size:
      raise UserInputError(f'fashion_mnist_scenes canvas_size={self.canvas_size}: expected >= '
                           f'{ITEM_SIZE} * max_scale = {ITEM_SIZE * self.max_scale:g} so every '
                           f'item fits')
    # repr() of a float round-trips, so distinct scales never share a name (0.75 -> '0.75').
    self.name = (f'c{self.canvas_size}_tr{self.num_train}_te{self.num_test}_'
                 f'o{self.min_objects}-{self.max_objects}_'
                 f's{self.min_scale!r}-{self.max_scale!r}_seed{self.seed}')
    self.description = (f'{self.canvas_size}x{self.canvas_size} scenes of {self.min_objects} to '
                        f'{self.max_objects} Fashion-MNIST items scaled by {self.min_scale} to '
                        f'{self.max_scale}; {self.num_train} train, {self.num_test} test scenes, '
                        f'seed {self.seed}.')

  @property
  def num_scenes(self) -> Dict[str, int]:
    return {'train': self.num_train, 'test': self.num_test}


def item_size(scale: float) -> int:
  """Side in pixels of a 28x28 item resized by `scale` (Python's round: ties to even)."""
  return int(round(ITEM_SIZE * scale))


def item_mask(image: np.ndarray) -> np.ndarray:
  """The derived mask of one Fashion-MNIST image: pixel > 0 with enclosed holes filled.

  Args:
    image: uint8 [28, 28] (or [28, 28, 1]).

  Returns:
    bool [28, 28].
  """
  # Holes are background regions not 4-connected to the border (scipy's default structure).
  if image.ndim == 3:
    image = image[..., 0]
  return ndimage.binary_fill_holes(image > 0)


def resize_item(image: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Resizes one item and its derived mask to [size, size].

  Args:
    image: uint8 [28, 28], a Fashion-MNIST image.
    size: output side in pixels.

  Returns:
    (pixels uint8 [size, size], resized with Pillow's bilinear filter (antialiased when shrinking),
     mask bool [size, size], `item_mask` resized with nearest neighbour so it stays binary).
  """
  pixels = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
  mask = Image.fromarray(item_mask(image).astype(np.uint8))
  mask = np.asarray(mask.resize((size, size), Image.Resampling.NEAREST)) > 0
  return pixels, mask


def render_scene(config: ScenesConfig, split: str, index: int, images: np.ndarray,
                 labels: np.ndarray) -> Dict[str, Any]:
  """Draws scene `index` of `split`.

  Per object, in painting order, the generator draws: the source image index (uniform over the
  split), the scale (uniform in [min_scale, max_scale)), then the top and left offsets (uniform
  over the positions where the item fits in the canvas). Each object overwrites the image, the
  segmentation and the instance map wherever its mask is 1, pixels that are 0 inside a filled
  hole included.

  Args:
    config: the dataset parameters (canvas size S, object counts, scales, seed).
    split: 'train' or 'test'; `images` and `labels` must be that Fashion-MNIST split.
    index: the scene's index in its split.
    images: uint8 [N, 28, 28], the split's images.
    labels: uint8 or int [N], their classes in [0, 10).

  Returns:
    The tfds example: 'image' uint8 [S, S, 1] (background 0), 'segmentation' uint8 [S, S]
    (0 = background, class + 1), 'instances' uint8 [S, S] (0 = background, i = the i-th painted
    object, 1-based), and 'objects', a dict of per-object lists (one entry per object with visible
    pixels, in painting order): 'bbox' float64 (ymin, xmin, ymax, xmax) in [0, 1], the tight box of
    its visible pixels with ymax = (last row + 1) / S; 'label' int; 'source_index' int (index
    into the split's IDX file); 'instance_id' int.
  """
  s = config.canvas_size
  rng = np.random.default_rng([config.seed, SPLIT_IDS[split], index])
  image = np.zeros((s, s), np.uint8)
  segmentation = np.zeros((s, s), np.uint8)
  instances = np.zeros((s, s), np.uint8)
  num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
  sources = []
  for instance_id in range(1, num_objects + 1):
    source = int(rng.integers(len(images)))
    size = item_size(rng.uniform(config.min_scale, config.max_scale))
    top, left = (int(v) for v in rng.integers(0, s - size + 1, size=2))
    pixels, mask = resize_item(images[source], size)
    window = (slice(top, top + size), slice(left, left + size))
    image[window][mask] = pixels[mask]
    segmentation[window][mask] = int(labels[source]) + 1
    instances[window][mask] = instance_id
    sources.append(source)

  objects = {'bbox': [], 'label': [], 'source_index': [], 'instance_id': []}
  for instance_id, source in enumerate(sources, start=1):
    rows = np.flatnonzero((instances == instance_id).any(axis=1))
    if not len(rows):
      continue  # Fully occluded by later objects.
    cols = np.flatnonzero((instances == instance_id).any(axis=0))
    objects['bbox'].append(np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64) / s)
    objects['label'].append(int(labels[source]))
    objects['source_index'].append(source)
    objects['instance_id'].append(instance_id)
  return {'image': image[..., None], 'segmentation': segmentation, 'instances': instances,
          'objects': objects}


class FashionMnistScenes(tfds.core.GeneratorBasedBuilder):
  """Multi-object scenes of real Fashion-MNIST items with derived masks (see the module docstring).

  Takes the Fashion-MNIST IDX folder through `dl_manager.manual_dir`, like FashionMnistIdx.
  Features: 'image' uint8 [S, S, 1], 'segmentation' uint8 [S, S] (0 = background, 1..10 = class
  + 1), 'instances' uint8 [S, S] (0 = background, i = i-th painted object), 'objects' a sequence
  of {'bbox' tfds BBox (ymin, xmin, ymax, xmax) float32 in [0, 1], 'label' class in [0, 10),
  'source_index' int64, 'instance_id' int64} for the visible objects.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Scenes of 1-4 real Fashion-MNIST items with derived masks.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = fm.HOW_TO_GET
  BUILDER_CONFIGS = [ScenesConfig()]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.canvas_size
    # Built outside tfds's catalog: DatasetInfo is returned directly (no metadata folder).
    return LocalDatasetInfo(
        builder=self,
        description=('Scenes of real Fashion-MNIST items pasted at random scales and positions '
                     '(train scenes from the train split only, test scenes from the test split '
                     'only). Masks are derived from the pixels (pixel > 0, holes filled), not '
                     'hand-drawn, as for M2NIST.'),
        features=tfds.features.FeaturesDict({
            # Raw uint8 tensors: no decode on read, and no TensorFlow to encode.
            'image': tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8),
            'segmentation': tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
            'instances': tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
            'objects': tfds.features.Sequence({
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(names=list(fm.CLASS_NAMES)),
                'source_index': tfds.features.Scalar(dtype=np.int64),
                'instance_id': tfds.features.Scalar(dtype=np.int64),
            }),
        }),
        supervised_keys=('image', 'segmentation'),
        # Index i is scene i (the pipeline shuffles).
        disable_shuffling=True,
        homepage='https://github.com/zalandoresearch/fashion-mnist',
        citation='Xiao, Rasul, Vollgraf. Fashion-MNIST. arXiv:1708.07747, 2017.',
    )

  def _split_generators(self, dl_manager):
    idx_dir = fm.find_idx_dir(str(dl_manager.manual_dir))
    return {split: self._generate_examples(idx_dir, split) for split in SPLIT_IDS}

  def _generate_examples(self, idx_dir: str, split: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    prefix = fm.SPLIT_FILES[split]
    images = fm.read_idx(os.path.join(idx_dir, f'{prefix}-images-idx3-ubyte.gz'))
    labels = fm.read_idx(os.path.join(idx_dir, f'{prefix}-labels-idx1-ubyte.gz'))
    if len(images) != len(labels):
      raise UserInputError(f'{idx_dir}: {len(images)} {prefix} images but {len(labels)} labels')
    config = self.builder_config
    for i in range(config.num_scenes[split]):
      yield i, render_scene(config, split, i, images, labels)


def prepare(config: ScenesConfig, idx_dir: str = '',
            tfds_dir: Optional[str] = None) -> FashionMnistScenes:
  """Builds the scenes once into `<tfds_dir>/fashion_mnist_scenes/<config.name>/1.0.0`.

  Args:
    config: the dataset parameters.
    idx_dir: folder with the Fashion-MNIST IDX files; '' looks in the default places.
    tfds_dir: tfds data dir; None for tfds's default (~/tensorflow_datasets).

  Returns:
    The prepared builder (array_record files; read with `as_data_source()`).

  Raises:
    UserInputError: the IDX files are missing or malformed.
  """
  idx_dir = fm.find_idx_dir(idx_dir)
  # tfds refuses a config object named like one of BUILDER_CONFIGS but not that object: the same
  # name means the same parameters, so the predefined one is used.
  known = FashionMnistScenes.builder_configs.get(config.name)
  builder = FashionMnistScenes(config=known or config, data_dir=tfds_dir or None,
                               file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=idx_dir))
  return builder


def load_examples(builder: FashionMnistScenes, split: str):
  """The full examples of a prepared split (objects and instances included), read lazily.

  Returns a tfds data source: len(), source[i] and source.__getitems__(indices) give numpy dicts.
  tfds decodes 'objects' to a dict of per-object lists ('bbox': list of float32 [4] arrays, ...);
  `stack_objects` turns it into arrays.
  """
  return builder.as_data_source()[split]


def stack_objects(objects: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """An example's 'objects' as arrays: 'bbox' float32 [n, 4] (ymin, xmin, ymax, xmax in [0, 1]),
  'label', 'source_index', 'instance_id' int64 [n]; n = 0 gives empty arrays of those shapes."""
  return {'bbox': np.asarray(objects['bbox'], np.float32).reshape(-1, 4),
          **{k: np.asarray(objects[k], np.int64).reshape(-1)
             for k in ('label', 'source_index', 'instance_id')}}


def config_from(data_config: Mapping) -> ScenesConfig:
  """The ScenesConfig described by a data config mapping (missing keys take the defaults)."""
  defaults = ScenesConfig()
  keys = {'canvas_size': 'canvas_size', 'num_train': 'num_train', 'num_test': 'num_test',
          'min_objects': 'min_objects', 'max_objects': 'max_objects', 'min_scale': 'min_scale',
          'max_scale': 'max_scale', 'seed': 'scenes_seed'}
  return ScenesConfig(**{field: data_config.get(key, getattr(defaults, field))
                         for field, key in keys.items()})


# What training reads; 'objects' varies in length and stays in the tfds files.
FIXED_FEATURES = ('image', 'segmentation')


def preprocess(examples: Mapping[str, np.ndarray], rngs) -> Dict[str, np.ndarray]:
  """uint8 batch -> 'image' float32 [B, S, S, 1] in [0, 1], 'segmentation' int32 [B, S, S].

  `rngs` (one generator per example) is unused: no stochastic preprocessing. Other keys pass
  through unchanged.
  """
  del rngs
  batch = dict(examples)
  batch['image'] = unit_float(examples['image'])
  if 'segmentation' in examples:  # An unlabelled pool's examples have none.
    batch['segmentation'] = examples['segmentation'].astype(np.int32)
  return batch


def load(data_config: Mapping):
  """Prepares (first use) and loads the scenes for semantic segmentation training.

  Args:
    data_config: mapping with optional keys idx_dir, tfds_dir, canvas_size, num_train, num_test,
      min_objects, max_objects, min_scale, max_scale, scenes_seed (ScenesConfig's defaults).

  Returns:
    segae_jax.data.Dataset with train/test splits of 'image' uint8 [S, S, 1] and
    'segmentation' uint8 [S, S], held in memory or streamed (data_config cache: 'auto',
    'memory', 'stream'; see data.pipeline.hold); num_classes 11 (background + 10 garments).

  Raises:
    UserInputError: a bad parameter (named) or missing/malformed IDX files.
  """
  config = config_from(data_config)
  builder = prepare(config, data_config.get('idx_dir', ''), data_config.get('tfds_dir') or None)
  sources = builder.as_data_source()
  s = config.canvas_size
  train, test = (hold(sources[split], data_config.get('cache', 'auto'), keys=FIXED_FEATURES)
                 for split in ('train', 'test'))
  return Dataset(name=NAME, train=train, test=test, image_shape=(s, s, 1),
                 num_classes=len(fm.CLASS_NAMES) + 1,
                 class_names=('background',) + tuple(fm.CLASS_NAMES), preprocess=preprocess)
