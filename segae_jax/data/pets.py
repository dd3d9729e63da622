"""The Oxford-IIIT Pet dataset (Parkhi et al., CVPR 2012) through tfds's stock `oxford_iiit_pet`.

37 cat and dog breeds, 3,680 train and 3,669 test photos of varying sizes, each with a
hand-drawn trimap. The stock tfds builder (version 4.0.0) stores 'image' (JPEG), 'segmentation_mask'
(PNG trimap, uint8 [h, w, 1]: 1 = pet, 2 = background, 3 = border / not classified), 'label'
(breed), 'species' (cat / dog), 'file_name' and 'head_bbox'.

Reading needs no TensorFlow: the dataset is prepared as array_record files and read with
`builder.as_data_source()` (random access, numpy, JPEG/PNG decoded with Pillow or OpenCV).
Preparing it once does need TensorFlow and internet access: the builder downloads about 800 MB
from robots.ox.ac.uk, extracts the archives with tf.io.gfile and re-encodes a few corrupt JPEGs
with tf.image. `load` refuses with one line, before downloading anything, when TensorFlow is
missing. To prepare on another machine and copy the result:

  pip install tensorflow-cpu
  python -c "import tensorflow_datasets as tfds; tfds.builder('oxford_iiit_pet',
      data_dir='DIR', file_format='array_record').download_and_prepare()"
  # then copy DIR/oxford_iiit_pet into config.data.tfds_dir (default ~/tensorflow_datasets)

The array_record format matters: tfds's default (tfrecord, what `tfds.load` writes) has no random
access, and `tfds.data_source(..., data_dir=DIR)` with a data_dir also prepares tfrecord unless
given builder_kwargs={'file_format': 'array_record'}.

The splits are never held in memory: `PetSource` decodes the requested examples on each read and
resizes them to config.data.image_size.
"""
import importlib.util
import numbers
import os
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segae_jax.data.dataset import Dataset
from segae_jax.data.sources import describe_example, hold, unit_float
from segae_jax.errors import UserInputError

NAME = 'oxford_iiit_pet'
SPLITS = ('train', 'test')
CLASS_NAMES = ('background', 'pet', 'border')
# The trimap's values -> class ids: 1 (pet) -> 1, 2 (background) -> 0, 3 (border) -> 2, so that
# background is 0 as in every other dataset here. Any other value (the real trimaps have none) ->
# 255, the ignore label of the segmentation losses and metrics, rather than a made-up class.
IGNORE_LABEL = 255
TRIMAP_TO_CLASS = np.full(256, IGNORE_LABEL, np.uint8)
TRIMAP_TO_CLASS[[1, 2, 3]] = [1, 0, 2]
PREPARE_HELP = ('pip install tensorflow-cpu, then rerun (the data is then read without '
                'TensorFlow), or prepare it on a machine with both: '
                f"tfds.builder('{NAME}', data_dir=DIR, file_format='array_record')"
                f'.download_and_prepare(), and copy DIR/{NAME} into config.data.tfds_dir')


def trimap_to_classes(trimap: np.ndarray) -> np.ndarray:
  """Trimap values -> class ids (uint8, same shape): 1 -> 1 pet, 2 -> 0 background, 3 -> 2 border,
  anything else -> 255 (ignored by the losses and metrics)."""
  return TRIMAP_TO_CLASS[trimap]


def resize_example(image: np.ndarray, trimap: np.ndarray,
                   image_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
  """Resizes one example to image_size and maps its trimap to class ids.

  Args:
    image: uint8 [h, w, 3] (a grayscale [h, w] or [h, w, 1] image is repeated to 3 channels, an
      alpha channel dropped; tfds's prepared files hold only RGB).
    trimap: uint8 [h', w'] or [h', w', 1], values 1, 2, 3; its size may differ from the image's
      (it does in tfds's mock examples), each is resized on its own.
    image_size: (height, width) of the outputs.

  Returns:
    image uint8 [height, width, 3], resized with Pillow's bilinear filter (antialiased when
    shrinking), and mask uint8 [height, width] of class ids (`trimap_to_classes`), resized with
    nearest neighbour so no class is invented between two others.
  """
  height, width = image_size
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  image = np.ascontiguousarray(image[..., :3])
  resized = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
  if trimap.ndim == 3:
    trimap = trimap[..., 0]
  # Nearest neighbour commutes with the value mapping, so map the smaller resized trimap.
  mask = np.asarray(Image.fromarray(np.ascontiguousarray(trimap)).resize(
      (width, height), Image.Resampling.NEAREST))
  return resized, trimap_to_classes(mask)


class PetSource:
  """One split read lazily from a tfds data source: decoded and resized on each read.

  Args:
    examples: a tfds data source of the stock builder (len() and [index] give numpy dicts with
      'image' uint8 [h, w, 3] and 'segmentation_mask' uint8 [h, w, 1]).
    image_size: (height, width) every example is resized to.
  """

  def __init__(self, examples, image_size: Tuple[int, int]):
    self.examples = examples
    self.image_size = tuple(image_size)

  def __len__(self) -> int:
    return len(self.examples)

  def describe(self, index: int) -> str:
    return describe_example(self.examples, index)

  def __getitems__(self, indices: Sequence[int]) -> Dict[str, np.ndarray]:
    """Reads examples by index.

    Returns:
      {'image': uint8 [n, height, width, 3], 'segmentation': uint8 [n, height, width]} with class
      ids 0 = background, 1 = pet, 2 = border, 255 = ignored (see `resize_example`).
    """
    height, width = self.image_size
    images = np.empty((len(indices), height, width, 3), np.uint8)
    masks = np.empty((len(indices), height, width), np.uint8)
    for j, index in enumerate(indices):
      # One example at a time, not the data source's __getitems__: JPEG decoding dominates
      # either way, and tfds 4.9.10's mock_data breaks __getitems__ (its mock gets no `self`).
      example = self.examples[int(index)]
      images[j], masks[j] = resize_example(example['image'], example['segmentation_mask'],
                                           self.image_size)
    return {'image': images, 'segmentation': masks}


def preprocess(examples: Mapping[str, np.ndarray], rngs) -> Dict[str, np.ndarray]:
  """uint8 examples -> {'image': float32 [B, H, W, 3] in [0, 1], 'segmentation': int32 [B, H, W]}.

  `rngs` (one generator per example) is unused: no stochastic preprocessing.
  """
  del rngs  # Deterministic.
  return {'image': unit_float(examples['image']),
          'segmentation': examples['segmentation'].astype(np.int32)}


def _one_line(error: BaseException) -> str:
  return ' '.join(f'{type(error).__name__}: {error}'.split())


def _image_size(value) -> Tuple[int, int]:
  try:
    height, width = value
  except (TypeError, ValueError):
    height = width = None
  if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
             for v in (height, width)):
    raise UserInputError(f'config.data.image_size={value!r}: expected (height, width), two '
                         f'positive integers')
  return int(height), int(width)


def prepared_builder(tfds_dir: str = '', download: bool = True):
  """The stock oxford_iiit_pet builder, prepared as array_record in `tfds_dir` (once).

  Args:
    tfds_dir: tfds data dir; '' for tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    download: prepare the dataset if it is not there (needs TensorFlow and internet access).

  Returns:
    The builder; read it with `as_data_source(split=...)` (the split must be named: under
    tfds.testing.mock_data, as_data_source() without one fails).

  Raises:
    UserInputError: not prepared and `download` is off; TensorFlow missing (checked before any
      download, since tfds needs it to extract and fix the files); the download or preparation
      failed; or the folder holds a tfrecord copy, which has no random access.
  """
  builder = tfds.builder(NAME, data_dir=os.path.expanduser(tfds_dir) if tfds_dir else None)
  where = os.fspath(builder.data_dir)
  if not builder.is_prepared():
    if not download:
      raise UserInputError(f'{NAME} is not prepared in {where} and config.data.download is False; '
                           f'set it to True (needs TensorFlow and internet access) or point '
                           f'config.data.tfds_dir at a prepared copy')
    if importlib.util.find_spec('tensorflow') is None:
      raise UserInputError(f'{NAME} must be prepared once with TensorFlow installed and internet '
                           f'access (it is not in {where}): {PREPARE_HELP}')
    try:
      builder.download_and_prepare(file_format='array_record')
    # Network, checksum, disk and extraction failures come as many exception types; all mean
    # "could not prepare", and tfds has already removed its incomplete folder.
    except Exception as e:  # pylint: disable=broad-except
      raise UserInputError(f'{NAME} could not be prepared in {where} ({_one_line(e)}); it needs '
                           f'TensorFlow and internet access: {PREPARE_HELP}') from e
  formats = builder.info.available_file_formats()
  if tfds.core.FileFormat.ARRAY_RECORD not in formats:
    found = ', '.join(sorted(f.value for f in formats)) or 'no known format'
    raise UserInputError(f'{NAME} in {where} is prepared as {found} (tfds.load\'s default), '
                         f'which has no random access; set config.data.tfds_dir to another folder '
                         f'to prepare an array_record copy there')
  return builder


def load(data_config: Mapping):
  """Loads Oxford-IIIT Pet for 3-class segmentation, preparing it on first use.

  Args:
    data_config: mapping with name 'oxford_iiit_pet' and optionally tfds_dir ('' = tfds's
      default), image_size ((height, width), default (64, 64)) and download (default True).

  Returns:
    segae_jax.data.Dataset with PetSource splits, held in memory once decoded or streamed
    (data_config cache: 'auto', 'memory', 'stream'; see data.pipeline.hold) ('image' uint8
    [n, H, W, 3], 'segmentation' uint8 [n, H, W]; classes 0 = background, 1 = pet,
    2 = border / not classified, i.e. trimap values 2, 1, 3), image_shape (H, W, 3),
    num_classes 3, and `preprocess` giving float32 images in [0, 1] and int32 masks.

  Raises:
    UserInputError: a bad image_size or download value, or the dataset is not prepared and cannot
      be (see `prepared_builder`).
  """
  image_size = _image_size(data_config.get('image_size', (64, 64)))
  download = data_config.get('download', True)
  if not isinstance(download, bool):
    raise UserInputError(f'config.data.download={download!r}: expected True or False')
  builder = prepared_builder(data_config.get('tfds_dir') or '', download)
  cache = data_config.get('cache', 'auto')
  splits = {split: hold(PetSource(builder.as_data_source(split=split), image_size), cache)
            for split in SPLITS}
  return Dataset(name=NAME, train=splits['train'], test=splits['test'],
                 image_shape=image_size + (3,), num_classes=len(CLASS_NAMES),
                 class_names=CLASS_NAMES, preprocess=preprocess)
