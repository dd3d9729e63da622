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
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from segae_jax.models.layers import DoubleConv, SegmentationModel, pool_windows
from segae_jax.models.registry import MODELS


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
  indices = jnp.argmax(windows, axis=-1).astype(jnp.int32)  # argmax: first of equal maxima.
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

  Attributes (besides segae_jax.models.layers.SegmentationModel's: image_shape, num_classes,
  features, norm, norm_axis_name, group_norm_groups, dropout, conv_impl, dtype, layers):
    pooling_indices: upsample with the encoder's max-pooling indices (SegNet); False gives plain
      nearest-neighbour upsampling (an ablation: the decoder then gets nothing from the encoder
      but the bottleneck).
  Height and width must be divisible by 2**len(features) (len(features) max-pools); dropout acts
  on the bottleneck (after the last pool).

  Outputs of `__call__`: {'seg_logits': [batch, height, width, num_classes]} in `dtype`
  (float32 if None).

  Raises:
    UserInputError (at init/apply): bad dropout, features, or image size (and, for a model
      constructed directly rather than by models.build, bad norm settings).
  """
  pooling_indices: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    """x: float32 [batch, height, width, channels] in [0, 1]."""
    layers = self._validated_layers(len(self.features))
    all_indices = []
    for i, f in enumerate(self.features):
      x = DoubleConv((f, f), layers, name=f'enc_level{i}')(x, train)
      x, indices = max_pool_with_indices(x)
      all_indices.append(indices)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train, name='dropout')(x)

    for i in reversed(range(len(self.features))):
      x = max_unpool(x, all_indices[i]) if self.pooling_indices else upsample_nearest(x)
      out = self.features[max(i - 1, 0)]
      x = DoubleConv((self.features[i], out), layers, name=f'dec_level{i}')(x, train)
    return {'seg_logits': layers.conv(self.num_classes, (1, 1), name='head')(x)}
