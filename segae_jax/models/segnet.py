"""SegNet (Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017).

The encoder's 2x2 max-pools remember where each maximum was (Sec. 3, "max-pooling indices"); each
decoder level upsamples by putting the values back at those positions, zeros elsewhere (Fig. 3),
then convolves to densify the sparse map. Unlike U-Net no feature maps are concatenated: only the
indices (2 bits per pooled value) cross from encoder to decoder.

Here each level is two [3x3 conv -> norm -> ReLU] (the paper's VGG-16 encoder has two or three per
level) and every level, including the last, is followed by a pool, so height and width must be
divisible by 2**len(features).
"""
from typing import Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from segae_jax.models.layers import DoubleConv, SegmentationModel, pool_windows
from segae_jax.models.registry import MODELS


def _window_argmax(windows: jnp.ndarray) -> jnp.ndarray:
  """[..., 4] windows -> int32 [...], the first (lowest) position of each window's maximum."""
  return jnp.argmax(windows, axis=-1).astype(jnp.int32)  # argmax: first of equal maxima.


def pool_indices(x: jnp.ndarray) -> jnp.ndarray:
  """The indices of max_pool_with_indices(x) alone: int32 [batch, h/2, w/2, channels] in 0..3.

  Raises:
    ValueError: odd height or width.
  """
  return _window_argmax(pool_windows(x))


def max_pool_with_indices(x: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """2x2 stride-2 max-pool that also returns where each maximum was.

  Args:
    x: [batch, height, width, channels], height and width even.

  Returns:
    pooled: [batch, height/2, width/2, channels], x's dtype; the maximum of each 2x2 window.
    indices: int32 [batch, height/2, width/2, channels] in 0..3, the position of the maximum
      inside its window in row-major order (0 top-left, 1 top-right, 2 bottom-left,
      3 bottom-right); ties go to the first (lowest) position.

  Raises:
    ValueError: odd height or width.
  """
  windows = pool_windows(x)
  indices = _window_argmax(windows)
  # Gather the value at the index (rather than windows.max) so the gradient flows to exactly the
  # position that max_unpool writes back to, also for ties.
  pooled = jnp.take_along_axis(windows, indices[..., None], axis=-1)[..., 0]
  return pooled, indices


def max_unpool(x: jnp.ndarray, indices: jnp.ndarray) -> jnp.ndarray:
  """Inverse placement of max_pool_with_indices: each value goes back to its argmax position.

  Built from a one-hot mask over each window and a reshape, so no scatter is needed.

  Args:
    x: [batch, h, w, channels] pooled values (or decoder features of the same shape).
    indices: int [batch, h, w, channels] in 0..3 from max_pool_with_indices.

  Returns:
    [batch, 2h, 2w, channels], x's dtype: x at the recorded positions, zeros elsewhere.
  """
  b, h, w, c = x.shape
  mask = jax.nn.one_hot(indices, 4, dtype=jnp.bool_)                # [b, h, w, c, 4]
  windows = jnp.where(mask, x[..., None], jnp.zeros((), x.dtype))  # where: no 0 * inf = nan.
  windows = windows.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return windows.reshape(b, 2 * h, 2 * w, c)


def upsample_nearest(x: jnp.ndarray) -> jnp.ndarray:
  """[batch, h, w, c] -> [batch, 2h, 2w, c], each value copied into its 2x2 block."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


@MODELS.register('segnet')
class SegNet(SegmentationModel):
  """SegNet for semantic segmentation (Badrinarayanan et al. 2017).

  Encoder level i: DoubleConv(features[i]) then max_pool_with_indices. Decoder level i (deepest
  first): unpool with level i's indices (or nearest-neighbour x2 when pooling_indices=False) then
  [conv features[i] -> norm -> ReLU] and [conv features[i-1] (features[0] at the top) -> norm ->
  ReLU], mirroring the encoder widths. A 1x1 convolution gives the class logits.

  encode gives (features, skips): the bottleneck after the last pool and the dropout, and the
  len(features) level outputs before their pools, finest first. decode recomputes the pooling
  indices from the skips (pool_indices; the same integers the encoder's pools used), so only
  where each 2x2 maximum of a skip lies reaches the decoder, not its values; a perturbed skip
  moves the unpooling positions.

  Attributes (besides segae_jax.models.layers.SegmentationModel's: image_shape, num_classes,
  features, norm, norm_axis_name, group_norm_groups, dropout, conv_impl, dtype, layers):
    pooling_indices: upsample with the encoder's max-pooling indices (SegNet); False gives plain
      nearest-neighbour upsampling (an ablation: the decoder then gets nothing from the encoder
      but the bottleneck, and ignores the skips).
  Height and width must be divisible by 2**len(features) (len(features) max-pools); dropout acts
  on the bottleneck (after the last pool).

  Outputs of `__call__` (= decode(*encode(x))): {'seg_logits': [batch, height, width,
  num_classes]} in `dtype` (float32 if None).

  Raises:
    UserInputError (at init/apply): bad dropout, features, or image size (and, for a model
      constructed directly rather than by models.build, bad norm settings).
  """
  pooling_indices: bool = True

  def setup(self):
    # Explicit names: those the single @nn.compact __call__ of earlier versions gave, so
    # checkpoints and the dropout's random stream stay the same.
    layers = self._validated_layers(len(self.features))
    features = self.features
    self.enc_levels = [DoubleConv((f, f), layers, name=f'enc_level{i}')
                       for i, f in enumerate(features)]
    self.dec_levels = [DoubleConv((f, features[max(i - 1, 0)]), layers, name=f'dec_level{i}')
                       for i, f in enumerate(features)]
    if self.dropout > 0:
      self.bottleneck_dropout = nn.Dropout(self.dropout, name='dropout')
    self.head = layers.conv(self.num_classes, (1, 1), name='head')

  def encode(self, x: jnp.ndarray, train: bool = False
             ) -> Tuple[jnp.ndarray, List[jnp.ndarray]]:
    """Images [batch, h, w, c] -> (features, skips), L = len(features) levels.

    features: the bottleneck, [batch, h/2^L, w/2^L, features[-1]], after the dropout.
    skips: L arrays, skips[i] = level i's output [batch, h/2^i, w/2^i, features[i]] before its
      pool, finest first.
    """
    skips = []
    for level in self.enc_levels:
      x = level(x, train)
      skips.append(x)
      x, _ = max_pool_with_indices(x)
    if self.dropout > 0:
      x = self.bottleneck_dropout(x, deterministic=not train)
    return x, skips

  def decode(self, features: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Dict[str, jnp.ndarray]:
    """(features, skips) from encode -> {'seg_logits'}; with pooling_indices each level unpools
    at the maxima of its skip's 2x2 windows, without them the skips are not read."""
    x = features
    for i in reversed(range(len(self.features))):
      x = max_unpool(x, pool_indices(skips[i])) if self.pooling_indices else upsample_nearest(x)
      x = self.dec_levels[i](x, train)
    return {'seg_logits': self.head(x)}
