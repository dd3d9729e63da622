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
  'unet_ae'   UNetAutoencoder: the U-Net encoder and a reconstruction decoder without skips.
Each is a SegmentationModel: `encode` (UNetBase's) gives (bottleneck, skips), the model's
`decode` the outputs, and `__call__` = decode(*encode(x)).

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
Every block gets its convolutions and norms from one segae_jax.models.layers.Layers, which
models.build makes (and validates) once from these attributes and conv_impl / dtype.
"""
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from segae_jax.errors import UserInputError
from segae_jax.models.layers import DoubleConv, Layers, SegmentationModel, pool_windows
from segae_jax.models.registry import MODELS
from segae_jax.models.vae import reparameterize

UPSAMPLES = ('transpose', 'resize')


def validate_upsample(upsample: str) -> None:
  """Raises UserInputError unless `upsample` is one of UPSAMPLES."""
  if upsample not in UPSAMPLES:
    raise UserInputError(
        f'unknown config.model.upsample {upsample!r}; known: {", ".join(UPSAMPLES)}')


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
  first_max = jax.nn.one_hot(jnp.argmax(pool_windows(x), axis=-1), 4, dtype=g.dtype)
  grad = (first_max * g[..., None]).reshape(b, h // 2, w // 2, c, 2, 2)
  return (grad.transpose(0, 1, 4, 2, 5, 3).reshape(b, h, w, c),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


class UNetEncoder(nn.Module):
  """U-Net contracting path (Ronneberger et al. 2015, Sec. 2).

  Level i is DoubleConv(features[i]); a 2x2 max-pool follows every level but the last. Optional
  dropout acts on the bottleneck (the last level's output), as in the paper's "drop-out layers
  at the end of the contracting path" (Sec. 3.1).

  Attributes:
    features: channels per level, e.g. (32, 64, 128, 256).
    layers: the model's factories (segae_jax.models.layers.make_layers).
    dropout: rate of nn.Dropout on the bottleneck (rng name 'dropout' when training).
  """
  features: Sequence[int]
  layers: Layers
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray,
               train: bool = False) -> Tuple[List[jnp.ndarray], jnp.ndarray]:
    """[batch, h, w, c] -> (skips, bottleneck), in layers.dtype (float32 if None).

    Returns:
      skips: len(features) - 1 arrays, skips[i] = level i's output [batch, h/2^i, w/2^i,
        features[i]] (before its pool), shallowest first.
      bottleneck: [batch, h/2^(L-1), w/2^(L-1), features[-1]], L = len(features).
    """
    skips = []
    for i, f in enumerate(self.features):
      x = DoubleConv((f, f), self.layers, name=f'level{i}')(x, train)
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
    layers: the model's factories.
    upsample: 'transpose' | 'resize'.
  """
  features: int
  layers: Layers
  upsample: str = 'transpose'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, h, w, c] float -> [batch, 2h, 2w, features] in layers.dtype."""
    if self.upsample == 'transpose':
      return self.layers.conv_transpose(self.features, (2, 2), strides=(2, 2), padding='VALID',
                                        name='deconv')(x)
    validate_upsample(self.upsample)
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method='bilinear')
    return self.layers.conv(self.features, (3, 3), padding='SAME', name='conv')(x)


class UNetDecoder(nn.Module):
  """U-Net expanding path and 1x1 head (Ronneberger et al. 2015, Sec. 2).

  For each level from the deepest but one up: Upsample2x to that level's width -> concatenate the
  encoder's skip of that level (when use_skips) -> DoubleConv. Then a 1x1 convolution to
  out_channels.

  Attributes:
    features: the encoder's features (the decoder runs features[:-1] in reverse).
    out_channels: channels of the output logits (classes, or image channels).
    layers: the model's factories.
    use_skips: concatenate the encoder skips; False gives a plain decoder that sees only its input.
    upsample: 'transpose' | 'resize' (see Upsample2x).
  """
  features: Sequence[int]
  out_channels: int
  layers: Layers
  use_skips: bool = True
  upsample: str = 'transpose'

  @nn.compact
  def __call__(self, x: jnp.ndarray, skips: Optional[Sequence[jnp.ndarray]] = None,
               train: bool = False) -> jnp.ndarray:
    """Bottleneck [batch, h', w', c] -> logits [batch, h'*2^(L-1), w'*2^(L-1), out_channels].

    Args:
      x: the bottleneck features (any channel count).
      skips: UNetEncoder's skips (shallowest first); required when use_skips, ignored otherwise.
      train: BatchNorm uses batch statistics (and updates 'batch_stats') when True.

    Returns:
      The logits, in layers.dtype (float32 if None).

    Raises:
      ValueError: use_skips without skips, or a skip count that does not match the features.
    """
    num_up = len(self.features) - 1
    if self.use_skips and (skips is None or len(skips) != num_up):
      raise ValueError(f'UNetDecoder with use_skips needs {num_up} skips, got '
                       f'{None if skips is None else len(skips)}')
    for i, f in enumerate(reversed(self.features[:-1])):
      x = Upsample2x(f, self.layers, self.upsample, name=f'up{i}')(x)
      if self.use_skips:
        x = jnp.concatenate([x, skips[num_up - 1 - i]], axis=-1)
      x = DoubleConv((f, f), self.layers, name=f'level{i}')(x, train)
    return self.layers.conv(self.out_channels, (1, 1), name='head')(x)


class UNetBase(SegmentationModel):
  """Attributes, checks and `encode` shared by the U-Net family (not registered):
  SegmentationModel's attributes and `upsample`; every member has an `encoder` (UNetEncoder)
  submodule.

  Use `isinstance(model, UNetBase)` to ask whether a model has a U-Net encoder.
  """
  upsample: str = 'transpose'

  def _unet_layers(self) -> Layers:
    """SegmentationModel._validated_layers for len(features) - 1 pools, after checking upsample.

    Raises:
      UserInputError: bad features, dropout, upsample, num_classes or image size (and, for a
        model constructed directly, bad norm settings).
    """
    validate_upsample(self.upsample)
    return self._validated_layers(len(self.features) - 1)

  def _encoder(self, layers: Layers) -> UNetEncoder:
    return UNetEncoder(self.features, layers, self.dropout, name='encoder')

  def _decoder(self, layers: Layers, out_channels: int, use_skips: bool,
               name: str) -> UNetDecoder:
    return UNetDecoder(self.features, out_channels, layers, use_skips, self.upsample, name=name)

  def encode(self, x: jnp.ndarray, train: bool = False
             ) -> Tuple[jnp.ndarray, List[jnp.ndarray]]:
    """Images [batch, h, w, c] -> (features, skips), UNetEncoder's outputs (with L =
    len(features) levels):

    features: the bottleneck after the encoder's dropout, [batch, h/2^(L-1), w/2^(L-1),
      features[-1]].
    skips: L - 1 arrays, skips[i] = level i's output [batch, h/2^i, w/2^i, features[i]] before
      its pool, finest first.
    """
    skips, bottleneck = self.encoder(x, train)
    return bottleneck, skips


@MODELS.register('unet')
class UNet(UNetBase):
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
    layers: the factories made from norm, norm_axis_name, group_norm_groups, conv_impl and
      dtype by models.build (segae_jax.models.layers.SegmentationModel); None: made at setup.

  Outputs of `__call__` (= decode(*encode(x))): {'seg_logits': [batch, height, width,
  num_classes]} in `dtype`.

  Raises:
    UserInputError: bad norm settings in models.build (at init/apply for a model constructed
      directly); bad upsample, dropout, features, or image size at init/apply.
  """

  def setup(self):
    layers = self._unet_layers()
    self.encoder = self._encoder(layers)
    self.decoder = self._decoder(layers, self.num_classes, True, 'decoder')

  def decode(self, features: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Dict[str, jnp.ndarray]:
    """(features, skips) from encode -> {'seg_logits'}; the decoder concatenates every skip."""
    return {'seg_logits': self.decoder(features, skips, train)}


@MODELS.register('segae')
class SegAutoencoder(UNetBase):
  """Segmentation autoencoder: one U-Net encoder shared by a segmentation and a reconstruction
  decoder, so that reconstructing the image (no labels needed) trains the encoder too.

  Attributes (besides UNet's):
    seg_skips: the segmentation decoder concatenates the encoder skips (a full U-Net).
    rec_skips: the reconstruction decoder concatenates the encoder skips. Off by default: with a
      full-resolution skip the reconstruction can copy the input around the bottleneck, so the
      shared encoder would learn nothing from reconstructing.

  Outputs of `__call__` (= decode(*encode(x))):
    'seg_logits': [batch, height, width, num_classes].
    'rec_logits': [batch, height, width, channels]; sigmoid gives the image.
    'z': the bottleneck features, [batch, h/2^(L-1), w/2^(L-1), features[-1]].
    All in `dtype` (float32 if None).
  """
  reconstructs: ClassVar[bool] = True
  seg_skips: bool = True
  rec_skips: bool = False

  def setup(self):
    layers = self._unet_layers()
    self.encoder = self._encoder(layers)
    self.seg_decoder = self._decoder(layers, self.num_classes, self.seg_skips, 'seg_decoder')
    self.rec_decoder = self._decoder(layers, self.image_shape[2], self.rec_skips, 'rec_decoder')

  def decode(self, features: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Dict[str, jnp.ndarray]:
    """(features, skips) from encode -> {'seg_logits', 'rec_logits', 'z' (= features)}; each
    decoder reads the skips only if told to (seg_skips, rec_skips)."""
    return {'seg_logits': self.seg_decoder(features, skips, train),
            'rec_logits': self.rec_decoder(features, skips, train), 'z': features}


@MODELS.register('unet_ae')
class UNetAutoencoder(UNetBase):
  """Convolutional autoencoder with a spatial bottleneck, trained without labels: the U-Net
  encoder and a decoder without skips that reconstructs the image from the bottleneck alone.

  SegAutoencoder without its segmentation decoder (same parameter names for the shared parts), so
  the encoder features of an unsupervised run feed segae_jax.tools.unsupervised exactly like
  those of a SegAutoencoder; `num_classes` is unused.

  Outputs of `__call__` (= decode(*encode(x))):
    'rec_logits': [batch, height, width, channels]; sigmoid gives the image.
    'z': the bottleneck features, [batch, h/2^(L-1), w/2^(L-1), features[-1]].
    Both in `dtype` (float32 if None).
  """
  segments: ClassVar[bool] = False
  reconstructs: ClassVar[bool] = True

  def setup(self):
    layers = self._unet_layers()
    self.encoder = self._encoder(layers)
    self.rec_decoder = self._decoder(layers, self.image_shape[2], False, 'rec_decoder')

  def decode(self, features: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Dict[str, jnp.ndarray]:
    """(features, skips) from encode -> {'rec_logits', 'z' (= features)}; the skips are not
    read (the reconstruction sees the bottleneck alone)."""
    del skips
    return {'rec_logits': self.rec_decoder(features, None, train), 'z': features}


@MODELS.register('vae_unet')
class VAEUNet(UNetBase):
  """U-Net with a variational bottleneck (Kingma & Welling 2014 on top of Ronneberger et al.).

  1x1 convolutions of the bottleneck give a per-position diagonal Gaussian q(z|x) (mean, logvar);
  z is sampled with the reparameterisation trick from the key passed as `rngs={'reparam': key}`.
  Each decoder projects z back to features[-1] channels (1x1 conv + ReLU). The segmentation
  decoder also concatenates the encoder skips (a U-Net conditioned on z); the reconstruction
  decoder sees z only, so the reconstruction and the KL term are about the latent and cannot be
  short-cut through the skips.

  The Gaussian and the sample belong to `decode`: encode's features are the encoder bottleneck
  (as for every U-Net), so perturbing them perturbs the posterior too, and decode needs
  rngs={'reparam': key}.

  Attributes (besides UNet's):
    latent_channels: channels of z per bottleneck position.

  Outputs of `__call__` (= decode(*encode(x))):
    'seg_logits': [batch, height, width, num_classes].
    'rec_logits': [batch, height, width, channels]; sigmoid gives the image.
    'mean', 'logvar', 'z': [batch, h/2^(L-1), w/2^(L-1), latent_channels].
    All in `dtype` (float32 if None).
  """
  reconstructs: ClassVar[bool] = True
  latent_channels: int = 16

  def setup(self):
    layers = self._unet_layers()
    if self.latent_channels < 1:
      raise UserInputError(
          f'config.model.latent_channels must be >= 1, got {self.latent_channels}')
    self.encoder = self._encoder(layers)
    self.to_mean = layers.conv(self.latent_channels, (1, 1))
    self.to_logvar = layers.conv(self.latent_channels, (1, 1))
    self.seg_project = layers.conv(self.features[-1], (1, 1))
    self.rec_project = layers.conv(self.features[-1], (1, 1))
    self.seg_decoder = self._decoder(layers, self.num_classes, True, 'seg_decoder')
    self.rec_decoder = self._decoder(layers, self.image_shape[2], False, 'rec_decoder')

  def decode(self, features: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Dict[str, jnp.ndarray]:
    """(features, skips) from encode -> {'seg_logits', 'rec_logits', 'mean', 'logvar', 'z'}.

    features -> (mean, logvar) -> z sampled with rngs 'reparam'; only the segmentation decoder
    reads `skips`.
    """
    mean, logvar = self.to_mean(features), self.to_logvar(features)
    z = reparameterize(self.make_rng('reparam'), mean, logvar)
    seg_logits = self.seg_decoder(nn.relu(self.seg_project(z)), skips, train)
    rec_logits = self.rec_decoder(nn.relu(self.rec_project(z)), None, train)
    return {'seg_logits': seg_logits, 'rec_logits': rec_logits, 'mean': mean, 'logvar': logvar,
            'z': z}
