"""The convolution paths behind config.conv_impl: XLA's own, the matmul kernel gradient below,
and oneDNN's primitives (segae_jax.native.onednn), all with lax.conv_general_dilated's signature.

'onednn' (the CPU default when its library loads): forward, input-gradient and kernel-gradient
convolutions are oneDNN primitives called as XLA custom calls; see `onednn_conv_general_dilated`.

'matmul_grad' (the CPU fallback), a kernel gradient computed as matrix products:

Why: XLA:CPU lowers the kernel (weight) gradient of a convolution to a convolution whose window
is the whole image, and runs it at 4-11 GFLOP/s for the layer sizes of our U-Nets and VAEs (a
32x32, 64->64 channel 3x3 layer at batch 32: 475-760 ms, against 40 ms for its forward pass;
benchmarks/profile_convs.py measures it). That one op was most of a CPU training step. Here the
kernel gradient is written the way it is defined,

    dL/dW[i, j, c, f] = sum over (batch, output position o) of x_eff[s*o + (i, j), c] * dy[o, f],

one matrix product per kernel tap over exactly the positions that tap touches, so nothing is
multiplied by padding or by the zeros of a dilated (transposed-convolution) input. The forward
pass and the input gradient stay XLA's own convolutions, which run near XLA's usual speed.

The mathematics is unchanged: same inputs, same parameters, same result up to float32 summation
order (tests/test_conv_ops.py compares values and gradients with lax.conv_general_dilated and
nn.ConvTranspose). Accelerators keep the plain lax path (see `resolve`).
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segae_jax.errors import UserInputError
from segae_jax.native import onednn

IMPLS = ('auto', 'xla', 'matmul_grad', 'onednn')

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve(impl: str) -> str:
  """The path `impl` runs on this backend: 'xla', 'matmul_grad' or 'onednn'.

  'auto' is 'xla' on GPU/TPU (their convolutions are fast) and on CPU 'onednn' when its library
  loads, else 'matmul_grad'. 'onednn' without its library is 'matmul_grad' too (after one
  RuntimeWarning from segae_jax.native.onednn naming the library and the reason).

  Raises:
    UserInputError: `impl` is not one of IMPLS, or is 'onednn' on a backend other than CPU.
  """
  if impl not in IMPLS:
    raise UserInputError(f'config.conv_impl={impl!r}; expected one of {", ".join(IMPLS)}')
  if impl in ('auto', 'onednn'):
    backend = jax.default_backend()
    if backend != 'cpu':
      if impl == 'onednn':
        raise UserInputError(f"config.conv_impl='onednn' runs on CPU only, not on {backend}; "
                             "use 'auto' or 'xla'")
      return 'xla'
    return 'onednn' if onednn.available() else 'matmul_grad'
  return impl


def _tap_positions(tap: int, n_in: int, n_out: int, stride: int, lhs_dilation: int,
                   pad_lo: int) -> Tuple[int, int, int, int, int]:
  """Which output positions a kernel tap reaches real (not padding, not dilation) inputs from.

  Output o reads the padded, dilated input at p = o * stride + tap - pad_lo, which is input
  p / lhs_dilation when p is a multiple of lhs_dilation inside [0, (n_in - 1) * lhs_dilation].
  Those o form an arithmetic progression, and so do their inputs.

  Returns:
    (out_start, out_step, in_start, in_step, count); count may be 0.
  """
  outs = [o for o in range(n_out)
          if (o * stride + tap - pad_lo) % lhs_dilation == 0
          and 0 <= (o * stride + tap - pad_lo) // lhs_dilation < n_in]
  if not outs:
    return 0, 1, 0, 1, 0
  step = outs[1] - outs[0] if len(outs) > 1 else 1
  assert outs == list(range(outs[0], outs[-1] + 1, step)), outs
  ins = [(o * stride + tap - pad_lo) // lhs_dilation for o in outs]
  return outs[0], step, ins[0], (ins[1] - ins[0] if len(ins) > 1 else 1), len(outs)


def _strided(x: jnp.ndarray, starts: Sequence[int], steps: Sequence[int],
             counts: Sequence[int]) -> jnp.ndarray:
  """x[:, starts[0]::steps[0] (counts[0] of them), starts[1]::..., :] for NHWC x."""
  start = (0, starts[0], starts[1], 0)
  limit = (x.shape[0], starts[0] + (counts[0] - 1) * steps[0] + 1,
           starts[1] + (counts[1] - 1) * steps[1] + 1, x.shape[3])
  return lax.slice(x, start, limit, (1, steps[0], steps[1], 1))


def kernel_grad(x: jnp.ndarray, dy: jnp.ndarray, kernel_size: Tuple[int, int],
                strides: Tuple[int, int], padding: Sequence[Tuple[int, int]],
                lhs_dilation: Tuple[int, int]) -> jnp.ndarray:
  """Gradient of sum(conv(x, W) * dy) with respect to W, one matrix product per tap.

  Args:
    x: [batch, height, width, in_channels], the convolution's input.
    dy: [batch, out_height, out_width, out_channels], the cotangent of its output.
    kernel_size: (kh, kw); strides, lhs_dilation: per spatial dimension; padding: explicit
      (low, high) pairs, as lax.conv_general_dilated takes them.

  Returns:
    [kh, kw, in_channels, out_channels], dtype of x.
  """
  if lhs_dilation == (1, 1):
    return _kernel_grad_padded(x, dy, kernel_size, strides, padding)
  taps = []
  for i in range(kernel_size[0]):
    row = []
    for j in range(kernel_size[1]):
      dims = [_tap_positions(t, x.shape[1 + d], dy.shape[1 + d], strides[d], lhs_dilation[d],
                             padding[d][0]) for d, t in enumerate((i, j))]
      if min(dim[4] for dim in dims) == 0:
        row.append(jnp.zeros((x.shape[3], dy.shape[3]), x.dtype))
        continue
      counts = [dim[4] for dim in dims]
      xs = _strided(x, [dim[2] for dim in dims], [dim[3] for dim in dims], counts)
      dys = _strided(dy, [dim[0] for dim in dims], [dim[1] for dim in dims], counts)
      # [out_channels, N] @ [N, in_channels]: the long contraction on the inner dimension of
      # both operands is the layout XLA:CPU's matmul runs fastest here.
      prod = dys.reshape(-1, dy.shape[3]).T @ xs.reshape(-1, x.shape[3])
      row.append(prod.T)
    taps.append(jnp.stack(row))
  return jnp.stack(taps).astype(x.dtype)


def _kernel_grad_padded(x, dy, kernel_size, strides, padding):
  """kernel_grad without input dilation: pad x once, then every tap is a strided window of the
  padded x against the whole dy, so dy is laid out [out_channels, N] once for all taps (the
  padding adds (h + 2) * (w + 2) / (h * w) - 1 of work, 13% at 32x32)."""
  xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*padding[0], 0), (*padding[1], 0),
                                           (0, 0, 0)])
  counts = dy.shape[1:3]
  dy_t = dy.reshape(-1, dy.shape[3]).T
  taps = [[(dy_t @ _strided(xp, (i, j), strides, counts).reshape(-1, x.shape[3])).T
           for j in range(kernel_size[1])] for i in range(kernel_size[0])]
  return jnp.stack([jnp.stack(row) for row in taps]).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, padding, lhs_dilation):
  return lax.conv_general_dilated(x, kernel, strides, padding, lhs_dilation=lhs_dilation,
                                  dimension_numbers=_NHWC)


def _conv_fwd(x, kernel, strides, padding, lhs_dilation):
  return _conv(x, kernel, strides, padding, lhs_dilation), (x, kernel)


def _conv_bwd(strides, padding, lhs_dilation, residuals, dy):
  x, kernel = residuals
  # The input gradient is XLA's own (a transposed convolution, fast on CPU).
  _, input_vjp = jax.vjp(lambda v: lax.conv_general_dilated(
      v, kernel, strides, padding, lhs_dilation=lhs_dilation, dimension_numbers=_NHWC), x)
  (dx,) = input_vjp(dy)
  dkernel = kernel_grad(x, dy, kernel.shape[:2], strides, padding, lhs_dilation)
  return dx, dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _nhwc_geometry(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, batch_group_count,
                   preferred_element_type):
  """(strides, explicit padding pairs, lhs_dilation) of a 2-D NHWC/HWIO convolution without
  kernel dilation, groups or a preferred output type, the ones the paths here handle; else None."""
  nd = lhs.ndim - 2
  if (nd != 2 or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
      or feature_group_count != 1 or batch_group_count != 1
      or any(d != 1 for d in (rhs_dilation or (1,) * nd))
      or preferred_element_type is not None):
    return None
  lhs_dilation = tuple(lhs_dilation or (1,) * nd)
  window_strides = tuple(window_strides)
  if isinstance(padding, str):
    dilated = [(n - 1) * d + 1 for n, d in zip(lhs.shape[1:3], lhs_dilation)]
    padding = lax.padtype_to_pads(dilated, rhs.shape[:2], window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return window_strides, padding, lhs_dilation


def _dispatch(fast: Callable[..., Optional[jnp.ndarray]], lhs, rhs, window_strides, padding,
              lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
              batch_group_count, precision, preferred_element_type) -> jnp.ndarray:
  """fast(lhs, rhs, strides, padding, lhs_dilation) for what _nhwc_geometry takes, unless it
  declines (returns None); else lax.conv_general_dilated with the arguments unchanged."""
  geometry = _nhwc_geometry(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count, batch_group_count,
                            preferred_element_type)
  out = None if geometry is None else fast(lhs, rhs, *geometry)
  if out is not None:
    return out
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """lax.conv_general_dilated with the matmul kernel gradient (same signature, same result).

  Handles 2-D NHWC/HWIO convolutions without kernel dilation or feature/batch groups, with any
  strides, padding and input (lhs) dilation; anything else goes to lax.conv_general_dilated
  unchanged. Usable as flax's `nn.Conv(..., conv_general_dilated=conv_general_dilated)`.
  """
  return _dispatch(_conv, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, batch_group_count, precision,
                   preferred_element_type)


def _onednn_conv(lhs, rhs, strides, padding, dilation) -> Optional[jnp.ndarray]:
  """The oneDNN call for one normalised geometry (see onednn_conv_general_dilated), or None
  where oneDNN does not take it."""
  if dilation == (1, 1):
    return (onednn.conv(lhs, rhs, strides, padding)
            if onednn.supported(lhs.dtype, rhs.dtype, padding) else None)
  kernel = rhs.shape[:2]
  adjoint_padding = tuple((kernel[d] - 1 - padding[d][0], kernel[d] - 1 - padding[d][1])
                          for d in (0, 1))
  out_hw = tuple((lhs.shape[1 + d] - 1) * dilation[d] + sum(padding[d]) - kernel[d] + 2
                 for d in (0, 1))
  if strides != (1, 1) or min(out_hw) < 1 or not onednn.supported(lhs.dtype, rhs.dtype,
                                                                    adjoint_padding):
    return None
  flipped = jnp.transpose(rhs[::-1, ::-1], (0, 1, 3, 2))
  return onednn.conv_transpose(lhs, flipped, out_hw, dilation, adjoint_padding)


def onednn_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                rhs_dilation=None, dimension_numbers=None,
                                feature_group_count=1, batch_group_count=1, precision=None,
                                preferred_element_type=None):
  """lax.conv_general_dilated on oneDNN's primitives (same signature, same result up to float
  summation order; tests/test_onednn.py states the tolerances).

  A plain convolution (no input dilation) is segae_jax.native.onednn.conv. One with input
  (lhs) dilation s and unit strides, the form lax.conv_transpose and flax's ConvTranspose take,
  is the adjoint of a stride-s convolution with the kernel flipped and its channel axes swapped,
  padded by (kernel - 1 - low, kernel - 1 - high): onednn.conv_transpose, oneDNN's backward-data
  primitive. Operands of other dtypes than float32/bfloat16, negative padding, and anything
  _nhwc_geometry refuses go to lax.conv_general_dilated unchanged.
  """
  return _dispatch(_onednn_conv, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, batch_group_count, precision,
                   preferred_element_type)


def _transpose_padding(kernel: int, stride: int, padding: str) -> Tuple[int, int]:
  """The explicit padding lax.conv_transpose uses for 'SAME'/'VALID' (output = input * stride
  for 'SAME'; input * stride + max(kernel - stride, 0) for 'VALID')."""
  if padding == 'SAME':
    total = kernel + stride - 2
    low = kernel - 1 if stride > kernel - 1 else -(-total // 2)
  elif padding == 'VALID':
    total = kernel + stride - 2 + max(kernel - stride, 0)
    low = kernel - 1
  else:
    raise ValueError(f'padding {padding!r}; expected SAME, VALID or explicit pairs')
  return low, total - low


def conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, strides: Tuple[int, int],
                   padding: Union[str, Sequence[Tuple[int, int]]],
                   conv: Callable[..., jnp.ndarray] = conv_general_dilated) -> jnp.ndarray:
  """lax.conv_transpose(x, kernel, strides, padding) (transpose_kernel=False, NHWC/HWIO), built
  on `conv` (this module's conv_general_dilated or onednn_conv_general_dilated): a stride-1
  convolution of the input dilated by `strides`.

  Args:
    x: [batch, height, width, in_channels]; kernel: [kh, kw, in_channels, out_channels].

  Returns:
    [batch, out_height, out_width, out_channels] (2x the input for stride 2 and 'SAME').
  """
  if isinstance(padding, str):
    padding = [_transpose_padding(k, s, padding) for k, s in zip(kernel.shape[:2], strides)]
  return conv(x, kernel, (1, 1), padding, lhs_dilation=tuple(strides), dimension_numbers=_NHWC)


# The conv_general_dilated each non-XLA path hands to nn.Conv and conv_transpose.
_HOOKS = {'matmul_grad': conv_general_dilated, 'onednn': onednn_conv_general_dilated}


def Conv(impl: str, *args, **kwargs) -> nn.Conv:  # pylint: disable=invalid-name
  """nn.Conv(*args, **kwargs) whose kernel gradient follows `impl` (see `resolve`).

  Same parameters ('kernel' [kh, kw, in, out], 'bias' [out]) and the same forward mathematics
  whatever `impl`, so checkpoints move freely between implementations and machines.
  """
  path = resolve(impl)
  if path in _HOOKS:
    kwargs['conv_general_dilated'] = _HOOKS[path]
  return nn.Conv(*args, **kwargs)


class ConvTranspose(nn.Module):
  """nn.ConvTranspose (transpose_kernel=False) with the kernel gradient following `impl`.

  Parameters are named and initialised as nn.ConvTranspose's ('kernel' [kh, kw, in, features],
  lecun-normal; 'bias' [features], zeros), and the output equals nn.ConvTranspose's
  (tests/test_conv_ops.py), so a checkpoint written with either loads into the other.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw); the output is `strides` times the input for padding 'SAME'.
    padding: 'SAME' | 'VALID' | explicit ((low, high), (low, high)) pairs of the dilated input.
    use_bias: add a learnt bias.
    impl: 'auto' | 'xla' | 'matmul_grad' | 'onednn' (see `resolve`).
    dtype: computation dtype (parameters stay float32); None keeps the input's.
  """
  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Any = 'SAME'
  use_bias: bool = True
  impl: str = 'auto'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[batch, h, w, in] -> [batch, h', w', features] (h' = h * stride for 'SAME')."""
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    strides = tuple(self.strides)
    padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
    path = resolve(self.impl)
    if path in _HOOKS:
      y = conv_transpose(x, kernel, strides, padding, conv=_HOOKS[path])
    else:
      y = lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=_NHWC)
    return y if bias is None else y + bias
