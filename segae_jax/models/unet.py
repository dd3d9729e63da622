"""U-Net and the U-Net-based segmentation autoencoders.

U-Net: Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015. Each level of the contracting path is two 3x3 convolutions (here
with SAME padding, so the output has the input's size, instead of the paper's unpadded ones) and a
2x2 max-pool; the expanding path upsamples 2x ("up-convolution", Sec. 2), concatenates the skip
feature map of the same level and applies two 3x3 convolutions; a 1x1 convolution maps to the
class logits. Batch normalisation after each convolution is the common modern addition (as in the
shared/bench `unet64` reference).

Models here (all registered in segae_jax.models.MODELS):
  'unet'      UNet: image -> 'seg_logits'.
  'segae'     SegAutoencoder: one shared encoder, a segmentation decoder and a reconstruction
              decoder -> 'seg_logits', 'rec_logits', 'z' (the bottleneck features).
  'vae_unet'  VAEUNet: the bottleneck is a per-position diagonal Gaussian (Kingma & Welling,
              "Auto-Encoding Variational Bayes", ICLR 2014, Sec. 2.4 reparameterisation);
              -> 'seg_logits', 'rec_logits', 'mean', 'logvar', 'z'.

Layout is NHWC; inputs are float32 [batch, height, width, channels] in [0, 1]. With L =
len(features) levels there are L - 1 max-pools, so height and width must be divisible by
2**(L - 1) (UserInputError otherwise).

Normalisation (`norm`): 'batch' (nn.BatchNorm, momentum 0.9; its running statistics live in the
'batch_stats' collection, so train-mode calls need `mutable=['batch_stats']`), 'group'
(nn.GroupNorm with `group_norm_groups` groups; no batch dependence) or 'none' (convolutions get a
bias instead). Under `jax.pmap` set `norm_axis_name` to the pmap axis name so that the batch
statistics are averaged over the devices (the statistics of the global batch); a train-mode call
with `norm_axis_name` set must then run inside a transform binding that axis. Under sharded
`jit` leave it None: the arrays are global and XLA computes global statistics already.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from segae_jax.errors import UserInputError
from segae_jax.models import conv_ops
from segae_jax.models.layers import check_divisible
from segae_jax.models.registry import MODELS
from segae_jax.models.vae import reparameterize

NORMS = ('batch', 'group', 'none')
UPSAMPLES = ('transpose', 'resize')


def validate_norm(norm: str, features: Sequence[int], group_norm_groups: int) -> None:
  """Raises UserInputError for an unknown `norm` or widths that GroupNorm cannot split."""
  if norm not in NORMS:
    raise UserInputError(f'unknown config.model.norm {norm!r}; known: {", ".join(NORMS)}')
  if norm == 'group':
    if group_norm_groups < 1:
      raise UserInputError(f'config.model.group_norm_groups must be >= 1, got {group_norm_groups}')
    bad = [f for f in features if f % group_norm_groups]
    if bad:
      raise UserInputError(
          f'config.model.features {tuple(features)} must all be divisible by '
          f'config.model.group_norm_groups={group_norm_groups} for norm=group (not: {bad})')


def validate_common(features: Sequence[int], norm: str, group_norm_groups: int,
                    dropout: float) -> None:
  """Checks the attributes every segmentation model shares; raises UserInputError."""
  if not features or any(int(f) < 1 for f in features):
    raise UserInputError(f'config.model.features must be a non-empty list of positive ints, '
                         f'got {tuple(features)}')
  validate_norm(norm, features, group_norm_groups)
  if not 0.0 <= dropout < 1.0:
    raise UserInputError(f'config.model.dropout must be in [0, 1), got {dropout}')


def validate_upsample(upsample: str) -> None:
  if upsample not in UPSAMPLES:
    raise UserInputError(
        f'unknown config.model.upsample {upsample!r}; known: {", ".join(UPSAMPLES)}')


def _pool_windows(x: jnp.ndarray) -> jnp.ndarray:
  """[batch, h, w, c] -> [batch, h/2, w/2, c, 4]: each 2x2 window's values on the last axis."""
  b, h, w, c = x.shape
  windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return windows.reshape(b, h // 2, w // 2, c, 4)


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2 stride-2 max-pool, [batch, h, w, c] -> [batch, h/2, w/2, c] (h, w even).

  The same values as nn.max_pool(x, (2, 2), strides=(2, 2)), written as a reshape and a max:
  XLA:CPU expands nn.max_pool's gradient into a variadic reduce-window over four int32 index
  arrays (about 8% of the summed op time of a unet64 training step). The gradient goes to the
  first maximum of each window (as nn.max_pool's does), found by an argmax over the window.

  Not jnp.max's own gradient: that one finds the maximum by comparing the input with the
  output, dividing by the number of matches, and XLA may recompute the input (fused producers)
  with other rounding than the output was computed with; with no match the division is 0/0
  and the whole encoder's gradient NaN (seen on XLA:CPU at LLVM -O0 in a 4-step U-Net run).
  """
  b, h, w, c = x.shape
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _max_pool_2x2_fwd(x):
  return max_pool_2x2(x), x


def _max_pool_2x2_bwd(x, g):
  b, h, w, c = x.shape
  first_max = jax.nn.one_hot(jnp.argmax(_pool_windows(x), axis=-1), 4, dtype=g.dtype)
  grad = (first_max * g[..., None]).reshape(b, h // 2, w // 2, c, 2, 2)
  return (grad.transpose(0, 1, 4, 2, 5, 3).reshape(b, h, w, c),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


class ConvNormReLU(nn.Module):
  """3x3 SAME convolution -> normalisation -> ReLU.

  The convolution has no bias when a norm follows: the norm subtracts the mean, which would cancel
  a bias, and its own learnt shift plays that role (as `bias=False` in the PyTorch reference).

  Attributes:
    features: output channels.
    norm: 'batch' | 'group' | 'none'.
    norm_axis_name: pmap axis over which BatchNorm averages its batch statistics, or None.
    group_norm_groups: number of groups for norm='group'.
    conv_impl: 'auto' | 'xla' | 'matmul_grad', how the convolution's gradients are computed
      (segae_jax.models.conv_ops; the same mathematics either way).
    dtype: computation dtype (config.compute_dtype); parameters and normalisation statistics
      stay float32. None: float32.
  """
  features: int
  norm: str = 'batch'
  norm_axis_name: Optional[str] = None
  group_norm_groups: int = 8
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """[batch, h, w, c_in] float32 -> [batch, h, w, features] float32."""
    x = conv_ops.Conv(self.conv_impl, self.features, (3, 3), padding='SAME',
                      use_bias=self.norm == 'none', dtype=self.dtype, name='conv')(x)
    if self.norm == 'batch':
      # momentum 0.9: running = 0.9 * running + 0.1 * batch, PyTorch's default momentum of 0.1.
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       axis_name=self.norm_axis_name, dtype=self.dtype, name='norm')(x)
    elif self.norm == 'group':
      x = nn.GroupNorm(num_groups=self.group_norm_groups, epsilon=1e-5, dtype=self.dtype,
                       name='norm')(x)
    elif self.norm != 'none':
      raise UserInputError(f'unknown config.model.norm {self.norm!r}; known: {", ".join(NORMS)}')
    return nn.relu(x)


class DoubleConv(nn.Module):
  """Two ConvNormReLU: the unit of every U-Net and SegNet level.

  Attributes:
    features: output channels of the (first, second) convolution.
    norm, norm_axis_name, group_norm_groups, conv_impl, dtype: as in ConvNormReLU.
  """
  features: Tuple[int, int]
  norm: str = 'batch'
  norm_axis_name: Optional[str] = None
  group_norm_groups: int = 8
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """[batch, h, w, c_in] float32 -> [batch, h, w, features[1]] float32."""
    for i, f in enumerate(self.features):
      x = ConvNormReLU(f, self.norm, self.norm_axis_name, self.group_norm_groups,
                       self.conv_impl, self.dtype, name=f'block{i}')(x, train)
    return x


class UNetEncoder(nn.Module):
  """U-Net contracting path (Ronneberger et al. 2015, Sec. 2).

  Level i is DoubleConv(features[i]); a 2x2 max-pool follows every level but the last. Optional
  dropout acts on the bottleneck (the last level's output), as in the paper's "drop-out layers
  at the end of the contracting path" (Sec. 3.1).

  Attributes:
    features: channels per level, e.g. (32, 64, 128, 256).
    norm, norm_axis_name, group_norm_groups, conv_impl, dtype: as in ConvNormReLU.
    dropout: rate of nn.Dropout on the bottleneck (rng name 'dropout' when training).
  """
  features: Sequence[int]
  norm: str = 'batch'
  norm_axis_name: Optional[str] = None
  group_norm_groups: int = 8
  dropout: float = 0.0
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray,
               train: bool = False) -> Tuple[List[jnp.ndarray], jnp.ndarray]:
    """[batch, h, w, c] -> (skips, bottleneck).

    Returns:
      skips: len(features) - 1 arrays, skips[i] = level i's output [batch, h/2^i, w/2^i,
        features[i]] (before its pool), shallowest first.
      bottleneck: [batch, h/2^(L-1), w/2^(L-1), features[-1]] float32, L = len(features).
    """
    skips = []
    for i, f in enumerate(self.features):
      x = DoubleConv((f, f), self.norm, self.norm_axis_name, self.group_norm_groups,
                     self.conv_impl, self.dtype, name=f'level{i}')(x, train)
      if i < len(self.features) - 1:
        skips.append(x)
        x = max_pool_2x2(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train, name='dropout')(x)
    return skips, x


class Upsample2x(nn.Module):
  """Doubles height and width and sets the channels to `features`.

  'transpose': ConvTranspose 2x2 stride 2 (the paper's "2x2 up-convolution"; VALID padding so
    each input pixel fills its own 2x2 output block, like PyTorch's ConvTranspose2d(c, f, 2, 2)).
  'resize': bilinear resize x2 then a 3x3 convolution; avoids the checkerboard artefacts of
    transposed convolutions (Odena et al., Distill 2016).

  Attributes:
    features: output channels.
    upsample: 'transpose' | 'resize'.
    conv_impl, dtype: as in ConvNormReLU.
  """
  features: int
  upsample: str = 'transpose'
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, h, w, c] float32 -> [batch, 2h, 2w, features] float32."""
    if self.upsample == 'transpose':
      return conv_ops.ConvTranspose(self.features, (2, 2), strides=(2, 2), padding='VALID',
                                    impl=self.conv_impl, dtype=self.dtype, name='deconv')(x)
    if self.upsample == 'resize':
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method='bilinear')
      return conv_ops.Conv(self.conv_impl, self.features, (3, 3), padding='SAME',
                           dtype=self.dtype, name='conv')(x)
    raise UserInputError(
        f'unknown config.model.upsample {self.upsample!r}; known: {", ".join(UPSAMPLES)}')


class UNetDecoder(nn.Module):
  """U-Net expanding path and 1x1 head (Ronneberger et al. 2015, Sec. 2).

  For each level from the deepest but one up: Upsample2x to that level's width -> concatenate the
  encoder's skip of that level (when use_skips) -> DoubleConv. Then a 1x1 convolution to
  out_channels.

  Attributes:
    features: the encoder's features (the decoder runs features[:-1] in reverse).
    out_channels: channels of the output logits (classes, or image channels).
    use_skips: concatenate the encoder skips; False gives a plain decoder that sees only its input.
    norm, norm_axis_name, group_norm_groups, conv_impl, dtype: as in ConvNormReLU.
    upsample: 'transpose' | 'resize' (see Upsample2x).
  """
  features: Sequence[int]
  out_channels: int
  use_skips: bool = True
  norm: str = 'batch'
  norm_axis_name: Optional[str] = None
  group_norm_groups: int = 8
  upsample: str = 'transpose'
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, skips: Optional[Sequence[jnp.ndarray]] = None,
               train: bool = False) -> jnp.ndarray:
    """Bottleneck [batch, h', w', c] -> logits [batch, h'*2^(L-1), w'*2^(L-1), out_channels].

    Args:
      x: the bottleneck features (any channel count), float32.
      skips: UNetEncoder's skips (shallowest first); required when use_skips, ignored otherwise.
      train: BatchNorm uses batch statistics (and updates 'batch_stats') when True.

    Raises:
      ValueError: use_skips without skips, or a skip count that does not match the features.
    """
    num_up = len(self.features) - 1
    if self.use_skips and (skips is None or len(skips) != num_up):
      raise ValueError(f'UNetDecoder with use_skips needs {num_up} skips, got '
                       f'{None if skips is None else len(skips)}')
    for i, f in enumerate(reversed(self.features[:-1])):
      x = Upsample2x(f, self.upsample, self.conv_impl, self.dtype, name=f'up{i}')(x)
      if self.use_skips:
        x = jnp.concatenate([x, skips[num_up - 1 - i]], axis=-1)
      x = DoubleConv((f, f), self.norm, self.norm_axis_name, self.group_norm_groups,
                     self.conv_impl, self.dtype, name=f'level{i}')(x, train)
    return conv_ops.Conv(self.conv_impl, self.out_channels, (1, 1), dtype=self.dtype,
                         name='head')(x)


class _UNetBase(nn.Module):
  """Attributes and checks shared by the U-Net family (not registered)."""
  image_shape: Tuple[int, int, int]
  num_classes: int = 11
  features: Sequence[int] = (32, 64, 128, 256)
  norm: str = 'batch'
  norm_axis_name: Optional[str] = None
  group_norm_groups: int = 8
  upsample: str = 'transpose'
  dropout: float = 0.0
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None

  def _check(self) -> None:
    validate_common(self.features, self.norm, self.group_norm_groups, self.dropout)
    validate_upsample(self.upsample)
    if self.num_classes < 1:
      raise UserInputError(f'config.model.num_classes must be >= 1, got {self.num_classes}')
    check_divisible(self.image_shape, len(self.features) - 1)

  def _encoder(self) -> UNetEncoder:
    return UNetEncoder(self.features, self.norm, self.norm_axis_name, self.group_norm_groups,
                       self.dropout, self.conv_impl, self.dtype, name='encoder')

  def _decoder(self, out_channels: int, use_skips: bool, name: str) -> UNetDecoder:
    return UNetDecoder(self.features, out_channels, use_skips, self.norm, self.norm_axis_name,
                       self.group_norm_groups, self.upsample, self.conv_impl, self.dtype,
                       name=name)

  def _conv1x1(self, features: int) -> nn.Conv:
    return conv_ops.Conv(self.conv_impl, features, (1, 1), dtype=self.dtype)


@MODELS.register('unet')
class UNet(_UNetBase):
  """U-Net for semantic segmentation (Ronneberger et al. 2015).

  With the defaults (features (32, 64, 128, 256), norm='batch', upsample='transpose') and
  image_shape (64, 64, 1) this is the shared/bench `unet64` reference network, parameter for
  parameter.

  Attributes:
    image_shape: (height, width, channels); height and width divisible by 2**(len(features)-1).
    num_classes: segmentation classes.
    features: channels per level; len(features) - 1 max-pools.
    norm: 'batch' | 'group' | 'none'.
    norm_axis_name: pmap axis name for cross-device BatchNorm statistics, or None.
    group_norm_groups: groups for norm='group'; must divide every entry of features.
    upsample: 'transpose' (ConvTranspose 2x2 stride 2) | 'resize' (bilinear x2 + 3x3 conv).
    dropout: dropout rate on the bottleneck; training with dropout > 0 needs rngs={'dropout': k}.
    conv_impl: 'auto' | 'xla' | 'matmul_grad' (segae_jax.models.conv_ops; same results).
    dtype: computation dtype (config.compute_dtype); parameters stay float32. None: float32.

  Outputs of `__call__`: {'seg_logits': [batch, height, width, num_classes]} in `dtype`.

  Raises:
    UserInputError (at init/apply): bad norm, upsample, dropout, features, or image size.
  """

  def setup(self):
    self._check()
    self.encoder = self._encoder()
    self.decoder = self._decoder(self.num_classes, True, 'decoder')

  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    """x: float32 [batch, height, width, channels] in [0, 1]."""
    skips, h = self.encoder(x, train)
    return {'seg_logits': self.decoder(h, skips, train)}


@MODELS.register('segae')
class SegAutoencoder(_UNetBase):
  """Segmentation autoencoder: one U-Net encoder shared by a segmentation and a reconstruction
  decoder, so that reconstructing the image (no labels needed) trains the encoder too.

  Attributes (besides UNet's):
    seg_skips: the segmentation decoder concatenates the encoder skips (a full U-Net).
    rec_skips: the reconstruction decoder concatenates the encoder skips. Off by default: with a
      full-resolution skip the reconstruction can copy the input around the bottleneck, so the
      shared encoder would learn nothing from reconstructing.

  Outputs of `__call__`:
    'seg_logits': float32 [batch, height, width, num_classes].
    'rec_logits': float32 [batch, height, width, channels]; sigmoid gives the image.
    'z': the bottleneck features, float32 [batch, h/2^(L-1), w/2^(L-1), features[-1]].
  """
  seg_skips: bool = True
  rec_skips: bool = False

  def setup(self):
    self._check()
    self.encoder = self._encoder()
    self.seg_decoder = self._decoder(self.num_classes, self.seg_skips, 'seg_decoder')
    self.rec_decoder = self._decoder(self.image_shape[2], self.rec_skips, 'rec_decoder')

  def encode(self, x: jnp.ndarray,
             train: bool = False) -> Tuple[List[jnp.ndarray], jnp.ndarray]:
    """Images [batch, h, w, c] -> (skips, z); see UNetEncoder."""
    return self.encoder(x, train)

  def decode(self, z: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(z, skips) -> (seg_logits, rec_logits); each decoder reads the skips only if told to."""
    return self.seg_decoder(z, skips, train), self.rec_decoder(z, skips, train)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    """x: float32 [batch, height, width, channels] in [0, 1]."""
    skips, z = self.encode(x, train)
    seg_logits, rec_logits = self.decode(z, skips, train)
    return {'seg_logits': seg_logits, 'rec_logits': rec_logits, 'z': z}


@MODELS.register('unet_ae')
class UNetAutoencoder(_UNetBase):
  """Convolutional autoencoder with a spatial bottleneck, trained without labels: the U-Net
  encoder and a decoder without skips that reconstructs the image from the bottleneck alone.

  SegAutoencoder without its segmentation decoder (same parameter names for the shared parts), so
  the encoder features of an unsupervised run feed segae_jax.tools.unsupervised exactly like those of a
  SegAutoencoder; `num_classes` is unused.

  Outputs of `__call__`:
    'rec_logits': float32 [batch, height, width, channels]; sigmoid gives the image.
    'z': the bottleneck features, float32 [batch, h/2^(L-1), w/2^(L-1), features[-1]].
  """

  def setup(self):
    self._check()
    self.encoder = self._encoder()
    self.rec_decoder = self._decoder(self.image_shape[2], False, 'rec_decoder')

  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    """x: float32 [batch, height, width, channels] in [0, 1]."""
    _, z = self.encoder(x, train)
    return {'rec_logits': self.rec_decoder(z, None, train), 'z': z}


@MODELS.register('vae_unet')
class VAEUNet(_UNetBase):
  """U-Net with a variational bottleneck (Kingma & Welling 2014 on top of Ronneberger et al.).

  1x1 convolutions of the bottleneck give a per-position diagonal Gaussian q(z|x) (mean, logvar);
  z is sampled with the reparameterisation trick from the key passed as `rngs={'reparam': key}`.
  Each decoder projects z back to features[-1] channels (1x1 conv + ReLU). The segmentation
  decoder also concatenates the encoder skips (a U-Net conditioned on z); the reconstruction
  decoder sees z only, so the reconstruction and the KL term are about the latent and cannot be
  short-cut through the skips.

  Attributes (besides UNet's):
    latent_channels: channels of z per bottleneck position.

  Outputs of `__call__`:
    'seg_logits': float32 [batch, height, width, num_classes].
    'rec_logits': float32 [batch, height, width, channels]; sigmoid gives the image.
    'mean', 'logvar', 'z': float32 [batch, h/2^(L-1), w/2^(L-1), latent_channels].
  """
  latent_channels: int = 16

  def setup(self):
    self._check()
    if self.latent_channels < 1:
      raise UserInputError(
          f'config.model.latent_channels must be >= 1, got {self.latent_channels}')
    self.encoder = self._encoder()
    self.to_mean = self._conv1x1(self.latent_channels)
    self.to_logvar = self._conv1x1(self.latent_channels)
    self.seg_project = self._conv1x1(self.features[-1])
    self.rec_project = self._conv1x1(self.features[-1])
    self.seg_decoder = self._decoder(self.num_classes, True, 'seg_decoder')
    self.rec_decoder = self._decoder(self.image_shape[2], False, 'rec_decoder')

  def encode(self, x: jnp.ndarray, train: bool = False
             ) -> Tuple[List[jnp.ndarray], jnp.ndarray, jnp.ndarray]:
    """Images [batch, h, w, c] -> (skips, mean, logvar); mean/logvar [batch, h', w', latent]."""
    skips, h = self.encoder(x, train)
    return skips, self.to_mean(h), self.to_logvar(h)

  def decode(self, z: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(z [batch, h', w', latent], skips) -> (seg_logits, rec_logits).

    Only the segmentation decoder reads `skips`.
    """
    seg_logits = self.seg_decoder(nn.relu(self.seg_project(z)), skips, train)
    rec_logits = self.rec_decoder(nn.relu(self.rec_project(z)), None, train)
    return seg_logits, rec_logits

  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    """x: float32 [batch, height, width, channels] in [0, 1]; needs rngs={'reparam': key}."""
    skips, mean, logvar = self.encode(x, train)
    z = reparameterize(self.make_rng('reparam'), mean, logvar)
    seg_logits, rec_logits = self.decode(z, skips, train)
    return {'seg_logits': seg_logits, 'rec_logits': rec_logits, 'mean': mean, 'logvar': logvar,
            'z': z}
