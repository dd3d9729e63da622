"""Layer factories and the building blocks the models share.

`Layers` is the set of factories of one model: its convolutions, transposed convolutions, dense
layers and normalisation, with the computation dtype, the convolution implementation and the
normalisation settled once (as the `conv` / `norm` partials of the flax ImageNet ResNet example).
`models.build` makes it with `make_layers`, which validates the normalisation settings once, and
hands it to the model; every block below receives it as its `layers` attribute.

Layout is NHWC: images are `[batch, height, width, channels]`. ConvEncoder halves the resolution
with each stride-2 convolution, so height and width must be divisible by `2 ** len(features)`.
"""
import dataclasses
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from segae_jax.errors import UserInputError
from segae_jax.models import conv_ops
from segae_jax.models.part_norm import PartBatchNorm

ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'elu': nn.elu,
    'leaky_relu': nn.leaky_relu,
    'tanh': jnp.tanh,
}
NORMS = ('batch', 'group', 'none')


def get_activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """The function ACTIVATIONS[name]; raises UserInputError for an unknown name."""
  if name not in ACTIVATIONS:
    raise UserInputError(f'unknown activation {name!r}; known: {", ".join(sorted(ACTIVATIONS))}')
  return ACTIVATIONS[name]


def check_divisible(image_shape: Sequence[int], num_downsamplings: int) -> None:
  """Raises UserInputError unless height and width divide by 2**num_downsamplings."""
  factor = 2 ** num_downsamplings
  height, width = image_shape[0], image_shape[1]
  if height % factor or width % factor:
    raise UserInputError(
        f'image size {height}x{width} is not divisible by {factor}, the total downsampling of '
        f'{num_downsamplings} stride-2 levels (config.model.features); change the features or '
        'the image size')


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


def _identity(x: jnp.ndarray) -> jnp.ndarray:
  return x


@dataclasses.dataclass(frozen=True)
class Layers:
  """The layer factories of one model; frozen and compared by value, so a model holding it stays
  hashable and two builds of one config are equal.

  Make it with `make_layers` (which validates); the fields are static settings:
    conv_impl: 'auto' | 'xla' | 'matmul_grad', how convolution gradients are computed
      (segae_jax.models.conv_ops; the same mathematics either way).
    dtype: computation dtype (config.compute_dtype, e.g. jnp.bfloat16); parameters and
      normalisation statistics stay float32. None: float32.
    norm_kind: 'batch' | 'group' | 'none' (config.model.norm).
    norm_axis_name: pmap axis over which BatchNorm averages its batch statistics, or None.
    group_norm_groups: number of groups for norm_kind='group'.
    norm_parts: () or the sizes of the consecutive parts a training-mode batch is made of, each
      normalised by BatchNorm with its own statistics (part_norm.PartBatchNorm: a step's passes
      over several kinds of images fused into one; SegmentationModel.with_norm_parts).
  """
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None
  norm_kind: str = 'none'
  norm_axis_name: Optional[str] = None
  group_norm_groups: int = 8
  norm_parts: Tuple[int, ...] = ()

  def conv(self, features: int, kernel_size: Tuple[int, int], **kwargs) -> nn.Conv:
    """conv_ops.Conv(conv_impl, features, kernel_size, dtype=dtype, **kwargs) (an nn.Conv)."""
    return conv_ops.Conv(self.conv_impl, features, kernel_size, dtype=self.dtype, **kwargs)

  def conv_transpose(self, features: int, kernel_size: Tuple[int, int],
                     **kwargs) -> conv_ops.ConvTranspose:
    """conv_ops.ConvTranspose(features, kernel_size, impl=conv_impl, dtype=dtype, **kwargs)."""
    return conv_ops.ConvTranspose(features, kernel_size, impl=self.conv_impl, dtype=self.dtype,
                                  **kwargs)

  def dense(self, features: int, **kwargs) -> nn.Dense:
    """nn.Dense(features, dtype=dtype, **kwargs)."""
    return nn.Dense(features, dtype=self.dtype, **kwargs)

  @property
  def conv_bias(self) -> bool:
    """Whether a convolution followed by `norm` needs its own bias: only without a norm (a norm
    subtracts the mean, cancelling a bias, and its learnt shift plays that role)."""
    return self.norm_kind == 'none'

  def norm(self, train: bool, name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The normalisation layer, [batch, h, w, c] -> same shape, in `dtype`.

    Args:
      train: BatchNorm normalises with the batch statistics and updates its running ones in the
        'batch_stats' collection (the call then needs mutable=['batch_stats']); otherwise it
        uses the running statistics. GroupNorm ignores it.
      name: the module name (its parameters' key).

    Returns:
      nn.BatchNorm (momentum 0.9, epsilon 1e-5; in training mode with norm_parts, its
      per-part form part_norm.PartBatchNorm), nn.GroupNorm (epsilon 1e-5), or for 'none' the
      identity, with no parameters.
    """
    if self.norm_kind == 'batch' and train and self.norm_parts:
      return PartBatchNorm(self.norm_parts, momentum=0.9, epsilon=1e-5,
                           axis_name=self.norm_axis_name, dtype=self.dtype, name=name)
    if self.norm_kind == 'batch':
      # momentum 0.9: running = 0.9 * running + 0.1 * batch, PyTorch's default momentum of 0.1.
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          axis_name=self.norm_axis_name, dtype=self.dtype, name=name)
    if self.norm_kind == 'group':
      return nn.GroupNorm(num_groups=self.group_norm_groups, epsilon=1e-5, dtype=self.dtype,
                          name=name)
    return _identity


def make_layers(features: Sequence[int] = (), norm: str = 'none', group_norm_groups: int = 8,
                norm_axis_name: Optional[str] = None, conv_impl: str = 'auto',
                dtype: Optional[Any] = None) -> Layers:
  """The validated Layers of a model whose convolutions have the widths `features`.

  Args:
    features: the channel counts GroupNorm must split (config.model.features).
    norm: 'batch' | 'group' | 'none' (config.model.norm).
    group_norm_groups: groups for norm='group'; must divide every entry of features.
    norm_axis_name, conv_impl, dtype: as in Layers.

  Raises:
    UserInputError: (one line, naming the config key) an unknown norm or conv_impl, or a group
      count that is < 1 or does not divide the features.
  """
  validate_norm(norm, features, group_norm_groups)
  conv_ops.resolve(conv_impl)  # UserInputError naming config.conv_impl if unknown.
  return Layers(conv_impl=conv_impl, dtype=dtype, norm_kind=norm, norm_axis_name=norm_axis_name,
                group_norm_groups=group_norm_groups)


def pool_windows(x: jnp.ndarray) -> jnp.ndarray:
  """[b, h, w, c] -> [b, h/2, w/2, c, 4]: each 2x2 window's values, in row-major order.

  Raises:
    ValueError: odd height or width.
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'2x2 pooling needs even height and width, got {h}x{w}')
  windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return windows.reshape(b, h // 2, w // 2, c, 4)


class ConvNormReLU(nn.Module):
  """3x3 SAME convolution -> normalisation -> ReLU.

  The convolution has no bias when a norm follows (Layers.conv_bias; as `bias=False` in the
  PyTorch reference).

  Attributes:
    features: output channels.
    layers: the model's factories (make_layers).
  """
  features: int
  layers: Layers

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """[batch, h, w, c_in] float -> [batch, h, w, features] in layers.dtype (float32 if None)."""
    x = self.layers.conv(self.features, (3, 3), padding='SAME', use_bias=self.layers.conv_bias,
                         name='conv')(x)
    return nn.relu(self.layers.norm(train, name='norm')(x))


class DoubleConv(nn.Module):
  """Two ConvNormReLU: the unit of every U-Net and SegNet level.

  Attributes:
    features: output channels of the (first, second) convolution.
    layers: the model's factories (make_layers).
  """
  features: Tuple[int, int]
  layers: Layers

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """[batch, h, w, c_in] float -> [batch, h, w, features[1]] in layers.dtype."""
    for i, f in enumerate(self.features):
      x = ConvNormReLU(f, self.layers, name=f'block{i}')(x, train)
    return x


class SegmentationModel(nn.Module):
  """Attributes, checks and the encode/decode interface shared by the segmentation models
  (U-Net family, SegNet); not registered itself.

  Every subclass splits its forward pass in two, and `__call__` is `decode(*encode(x))`, so an
  objective can perturb or replace the features without knowing the model:

    feats, skips = model.apply(variables, x, True, method='encode', rngs=..., mutable=...)
    out = model.apply(variables, drop(feats), [drop(s) for s in skips], True, method='decode',
                      rngs=..., mutable=...)

  encode(images, train) -> (features, skips):
    features: the bottleneck, the encoder's deepest output after the model's own bottleneck
      dropout (config.model.dropout), float [batch, h', w', c'] in the compute dtype.
    skips: list of the encoder's level outputs, finest (full resolution) first, each float
      [batch, h / 2**i, w / 2**i, features[i]] taken before that level's pool; the U-Net
      family gives len(features) - 1 of them, SegNet len(features). What each decoder reads of
      them is the model's own (a U-Net decoder concatenates them, SegNet's reads only where
      their 2x2 maxima are, a decoder without skips ignores them).
  decode(features, skips, train) -> outputs: the dict `__call__` returns ('seg_logits', and
    'rec_logits', 'z', 'mean', 'logvar' where the model has them); 'z' of the SegAE and
    U-Net autoencoder is the `features` given. A VAE-U-Net samples its latent inside decode, so
    decode needs rngs={'reparam': key} as `__call__` does.
  Both take `train` as `__call__` does: BatchNorm in train mode needs mutable=['batch_stats'],
  dropout needs rngs={'dropout': key}. The parameters are those of `__call__`; calling the two
  halves with the same keys gives `__call__`'s outputs exactly.

  Attributes:
    image_shape: (height, width, channels).
    num_classes: segmentation classes.
    features: channels per level.
    norm: 'batch' | 'group' | 'none'.
    norm_axis_name: pmap axis name for cross-device BatchNorm statistics, or None.
    group_norm_groups: groups for norm='group'; must divide every entry of features.
    dropout: dropout rate on the bottleneck; training with dropout > 0 needs rngs={'dropout': k}.
    conv_impl: 'auto' | 'xla' | 'matmul_grad' (segae_jax.models.conv_ops; same results).
    dtype: computation dtype (config.compute_dtype); parameters stay float32. None: float32.
    layers: the factories, made from the five attributes above by models.build (which
      validates them there, once); None (a model constructed directly) makes them at setup.
  """
  # Whether the model outputs 'seg_logits' / 'rec_logits' (class attributes, not fields).
  segments: ClassVar[bool] = True
  reconstructs: ClassVar[bool] = False
  image_shape: Tuple[int, int, int]
  num_classes: int = 11
  features: Sequence[int] = (32, 64, 128, 256)
  norm: str = 'batch'
  norm_axis_name: Optional[str] = None
  group_norm_groups: int = 8
  dropout: float = 0.0
  conv_impl: str = 'auto'
  dtype: Optional[Any] = None
  layers: Optional[Layers] = None

  def _validated_layers(self, num_pools: int) -> Layers:
    """Checks the attributes for a model with `num_pools` 2x downsamplings and returns the
    factories: `layers`, or for a model constructed directly (layers None) layers_of(self).

    Raises:
      UserInputError: bad features, dropout, num_classes or image size; for a model constructed
        directly also a bad norm, group count or conv_impl.
    """
    if not self.features or any(int(f) < 1 for f in self.features):
      raise UserInputError(f'config.model.features must be a non-empty list of positive ints, '
                           f'got {tuple(self.features)}')
    if not 0.0 <= self.dropout < 1.0:
      raise UserInputError(f'config.model.dropout must be in [0, 1), got {self.dropout}')
    if self.segments and self.num_classes < 1:  # A model that only reconstructs has no classes.
      raise UserInputError(f'config.model.num_classes must be >= 1, got {self.num_classes}')
    check_divisible(self.image_shape, num_pools)
    return self.layers if self.layers is not None else layers_of(self)

  def encode(self, x: jnp.ndarray, train: bool = False
             ) -> Tuple[jnp.ndarray, List[jnp.ndarray]]:
    """Images float [batch, height, width, channels] in [0, 1] -> (features, skips) (see the
    class docstring)."""
    raise NotImplementedError

  def decode(self, features: jnp.ndarray, skips: Sequence[jnp.ndarray],
             train: bool = False) -> Dict[str, jnp.ndarray]:
    """(features, skips) from encode -> the outputs dict (see the class docstring)."""
    raise NotImplementedError

  def __call__(self, x: jnp.ndarray, train: bool = False) -> Dict[str, jnp.ndarray]:
    """x: float32 [batch, height, width, channels] in [0, 1] -> decode(*encode(x))."""
    features, skips = self.encode(x, train)
    return self.decode(features, skips, train)

  def with_norm_parts(self, parts: Sequence[int]) -> 'SegmentationModel':
    """This model (the same parameters and variables) for training-mode batches made of
    consecutive parts of sizes `parts`, each normalised by BatchNorm with its own statistics
    and only the first updating the running ones (Layers.norm_parts): one pass over the parts
    concatenated gives what a pass over each would. A model without BatchNorm is unchanged."""
    layers = self.layers if self.layers is not None else layers_of(self)
    return self.clone(layers=dataclasses.replace(layers, norm_parts=tuple(int(p) for p in parts)))


def layers_of(model: SegmentationModel) -> Layers:
  """make_layers for `model`'s own norm, norm_axis_name, group_norm_groups, conv_impl and dtype;
  what models.build hands to a segmentation model (raises UserInputError as make_layers)."""
  return make_layers(model.features, model.norm, model.group_norm_groups, model.norm_axis_name,
                     model.conv_impl, model.dtype)


class ConvEncoder(nn.Module):
  """Stride-2 3x3 convolutions, then a dense hidden layer and a dense output.

  Attributes:
    features: channels of each stride-2 convolution, e.g. (32, 64).
    hidden_dim: width of the dense layer after flattening.
    output_dim: size of the output vector (latent size, or 2x latent size for a VAE).
    activation: name in ACTIVATIONS.
    layers: conv_impl and dtype (Layers(); the default is float32 with conv_impl 'auto').
  """
  features: Sequence[int]
  hidden_dim: int
  output_dim: int
  activation: str = 'relu'
  layers: Layers = Layers()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, height, width, channels] float -> [batch, output_dim] float."""
    act, layers = get_activation(self.activation), self.layers
    for i, f in enumerate(self.features):
      x = act(layers.conv(f, (3, 3), strides=(2, 2), padding='SAME', name=f'conv{i}')(x))
    x = x.reshape((x.shape[0], -1))
    x = act(layers.dense(self.hidden_dim, name='hidden')(x))
    return layers.dense(self.output_dim, name='out')(x)


class ConvDecoder(nn.Module):
  """Mirror of ConvEncoder: dense layers, reshape, stride-2 3x3 transposed convolutions.

  Attributes: features (the encoder's; run in reverse), hidden_dim (width of the first dense
  layer), image_shape ((height, width, channels) of the output), activation and layers (as in
  ConvEncoder).
  """
  features: Sequence[int]
  hidden_dim: int
  image_shape: Tuple[int, int, int]
  activation: str = 'relu'
  layers: Layers = Layers()

  @nn.compact
  def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
    """[batch, latent] -> logits [batch, height, width, channels] (sigmoid gives the image)."""
    act, layers = get_activation(self.activation), self.layers
    factor = 2 ** len(self.features)
    h0, w0 = self.image_shape[0] // factor, self.image_shape[1] // factor
    x = act(layers.dense(self.hidden_dim, name='hidden')(z))
    x = act(layers.dense(h0 * w0 * self.features[-1], name='project')(x))
    x = x.reshape((z.shape[0], h0, w0, self.features[-1]))
    # The encoder's widths back up, then the image's channels; no activation on the logits.
    widths = list(reversed(self.features[:-1])) + [self.image_shape[2]]
    names = [f'deconv{i}' for i in range(len(widths) - 1)] + ['out']
    for f, name in zip(widths, names):
      x = layers.conv_transpose(f, (3, 3), strides=(2, 2), padding='SAME', name=name)(x)
      x = x if name == 'out' else act(x)
    return x
