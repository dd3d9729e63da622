"""Segmenter: label maps of images of any size, from a logits function: a restored training run's
(tools.common.TrainedRun.segmenter), an exported model's (Segmenter.from_export, no workdir,
config or checkpoint needed), or the model being trained (scoring.NativeScorer).

  import segae_jax
  segmenter = segae_jax.Segmenter.from_workdir('runs/unet_mine')   # or .from_export('model/')
  labels = segmenter.predict(image)  # uint8 [height, width] class ids of one image
  segmenter.class_names              # ['background', 'cat', ...]

Every route runs the same code around a logits function (float32 pixels -> float32 logits, the
input normalisation inside), so a workdir and its export give the same labels. It is also the
path of `predict` and `evaluate`, whose flags are the fields of Inference. (segae_jax.Segmenter,
segae_jax/api.py, is this class plus from_workdir, which restores a run above this layer.)
"""
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from segae_jax import batch
from segae_jax.data import batching, normalize, sizing
from segae_jax.errors import UserInputError
from segae_jax.inference import export, postprocess, tiling

# float32 pixels [batch, height, width, channels] in the images' own units (0..255 for 8-bit
# images) -> float32 logits [batch, height, width, classes].
Logits = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Inference:
  """How images of any size meet the model, and what is done to its outputs (the flags of
  tools.common.define_inference_flags; inference.tiling, inference.postprocess).

  Raises:
    UserInputError: an unknown mode, blend or tta, an overlap outside [0, 1), or a negative
      min_component_size.
  """
  mode: str = 'auto'
  overlap: float = 0.25
  blend: str = 'gaussian'
  tile_size: str = ''
  tta: str = 'none'
  min_component_size: int = 0
  fill_holes: bool = False

  def __post_init__(self):
    tiling.check_options(self.mode, self.overlap, self.blend)
    postprocess.check_options(self.tta, self.min_component_size)

  @classmethod
  def from_flags(cls, flag_values=None) -> 'Inference':
    """From the parsed flags of define_inference_flags (absl's FLAGS by default)."""
    if flag_values is None:
      from absl import flags  # pylint: disable=import-outside-toplevel
      flag_values = flags.FLAGS
    return cls(flag_values.mode, flag_values.overlap, flag_values.blend, flag_values.tile_size,
               flag_values.tta, flag_values.min_component_size, flag_values.fill_holes)

  @property
  def refined(self) -> bool:
    """Whether test-time augmentation or post-processing changes the plain label maps."""
    return self.tta != 'none' or self.min_component_size > 1 or self.fill_holes

  def plain(self) -> 'Inference':
    """The same inference without test-time augmentation and post-processing."""
    return dataclasses.replace(self, tta='none', min_component_size=0, fill_holes=False)


class Segmenter:
  """Label maps of images of any size at their own size.

  Each image is tiled (inference.tiling: tiles of `tile_size` overlapping by inference.overlap,
  blended logits, then arg-max) or resized (to the model input, bilinear; the label map back to
  the image's size, nearest neighbour): tiled when inference.mode is 'tile', or 'auto' and the
  image is larger than the input on an axis. With inference.tta='hflip' or 'flips' the logits (of
  each tile, or of the resized image) are the mean over the image and its left-right (or all
  three) mirror images (inference.postprocess.PASSES); the label maps are then
  post-processed at the image's size (inference.postprocess).

  Args:
    logits: the model at its input size (see Logits); called on batches of at most batch_size.
    input_shape: (height, width, channels) the model takes, in pixels.
    class_names: one name per class (may be empty).
    inference: mode, overlap, blend, test-time augmentation, post-processing.
    batch_size: images (resized) or tiles per call of a logits function.
    tile_logits: the model at `tile_size` (default: `logits`, tiles of the input size).
    tile_size: (height, width) of the tiles, in pixels (default: the input's).
    normalization: the run's (data.normalize.Normalization: the dtype its images were stored in,
      its mode); each image is checked against it (data.normalize.conform: refused, or converted
      with one warning, where the run cannot take it as it is). None: only the channel count is
      checked (a logits function of unknown units).
  """

  def __init__(self, logits: Logits, input_shape: Sequence[int], class_names: Sequence[str] = (),
               inference: Inference = Inference(), batch_size: int = 32,
               tile_logits: Optional[Logits] = None,
               tile_size: Optional[Sequence[int]] = None,
               normalization: Optional[normalize.Normalization] = None):
    self.input_shape: Tuple[int, int, int] = tuple(int(n) for n in input_shape)
    self.class_names, self.inference, self.batch_size = list(class_names), inference, batch_size
    self.tiles = tiling.Tiling(tuple(tile_size or self.input_size), inference.overlap,
                               inference.blend, batch_size)
    self._logits, self._tile_logits = logits, tile_logits or logits
    self.normalization = normalization
    if inference.tta != 'none':  # Logits to average: the arg-max after the mean.
      passes = postprocess.PASSES[inference.tta]
      self._logits = postprocess.with_flips(self._logits, passes)
      self._tile_logits = postprocess.with_flips(self._tile_logits, passes)

  @property
  def input_size(self) -> Tuple[int, ...]:
    """(height, width) of the model input, in pixels."""
    return batch.spatial_shape(self.input_shape, 0)

  @classmethod
  def from_export(cls, path: str, batch_size: int = 32, **inference) -> 'Segmenter':
    """A model written by `segae-export --output=path` (inference.export: tiles of its input
    size), with Inference(**inference) (e.g. tta='hflip').

    Raises:
      UserInputError: `path` holds no export, or a bad inference option.
    """
    options = Inference(**inference)
    logits, spec = export.read(path)
    # Exports from before the normalisation was recorded took 8-bit 'unit' pixels (from_dict(None)).
    return cls(logits, spec['input_shape'], spec['class_names'], options, batch_size,
               normalization=normalize.Normalization.from_dict(spec.get('normalization')))

  def uses_tiles(self, height: int, width: int) -> bool:
    """Whether a height x width image is tiled: mode 'tile', or 'auto' and larger than the
    model input on an axis."""
    return tiling.is_tiled(self.inference.mode, self.input_size, height, width)

  def check(self, image: np.ndarray, name: str = 'image') -> np.ndarray:
    """One image, [height, width] or [height, width, channels], as the run takes it: checked
    against its normalisation (data.normalize.conform with from_file=False: uint8 and uint16
    arrays are bit depths and must be the run's, but an 8-bit one converts into a 16-bit 'unit'
    run; float and signed-integer arrays are values in the run's units, float32 0..255 for an
    8-bit run; an 8-bit grayscale image replicates into an 8-bit RGB run, an opaque alpha channel
    is dropped, each with one warning) -> [height, width, channels].

    Raises:
      UserInputError: one line naming the image: another shape, channel count or bit depth than
        the run can take, values outside its range, NaN.
    """
    channels = self.input_shape[-1]
    if self.normalization is not None:
      return normalize.conform(image, name, channels, self.normalization, from_file=False)
    image = np.asarray(image)
    image = image[..., None] if image.ndim == 2 else image
    if image.ndim != batch.SPATIAL_RANK + 1 or image.shape[-1] != channels:
      raise UserInputError(f'{name} of shape {image.shape}: expected [height, width, '
                           f'{channels}] (the model\'s channels)')
    return image

  def predict(self, image: np.ndarray) -> np.ndarray:
    """One image, [height, width] or [height, width, channels] with the model's channels, in the
    units the model was trained on (uint8 0..255 for 8-bit images) -> uint8 [height, width]
    class ids (see check and __call__).

    Raises:
      UserInputError: an image the run cannot take (see check).
    """
    return self([image])[0]

  def __call__(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
    """[height, width, channels] images (any sizes; each checked against the run, see check:
    'image i' in messages) -> uint8 [height, width] class ids each.

    Raises:
      UserInputError: an image the run cannot take (see check), before any is segmented.
    """
    images = [self.check(image, f'image {i}') for i, image in enumerate(images)]
    size = self.input_size
    tiled = [self.uses_tiles(*batch.spatial_shape(image, 0)) for image in images]
    labels: List[Optional[np.ndarray]] = [None] * len(images)
    resized = [i for i, t in enumerate(tiled) if not t]
    if resized:
      inputs = np.stack([sizing.resize_image(images[i], size) for i in resized])
      logits = batching.map_batched(self._logits, inputs.astype(np.float32), self.batch_size)
      for i, label in zip(resized, logits.argmax(-1).astype(np.uint8)):
        labels[i] = sizing.resize_mask(label, batch.spatial_shape(images[i], 0))
    for i in (i for i, t in enumerate(tiled) if t):
      pixels = np.asarray(images[i], np.float32)
      labels[i] = self.tiles.apply(self._tile_logits, pixels).argmax(-1).astype(np.uint8)
    return [postprocess.postprocess(label, self.inference.min_component_size,
                                    self.inference.fill_holes) for label in labels]
