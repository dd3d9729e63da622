"""oneDNN convolutions inside compiled steps: XLA:CPU custom calls through JAX's typed FFI.

The handlers (onednn_conv.cc, built by `make install` through segae_jax.native.build) wrap
oneDNN's convolution_forward, convolution_backward_data and convolution_backward_weights
primitives. Here they are registered with `jax.ffi.register_ffi_target`, called with
`jax.ffi.ffi_call`, and tied together under `jax.custom_vjp`, so jit, grad, pmap and sharded jit
treat them as any other op:

  conv(x, w)            y = S(x; w), the convolution below, and its two gradients;
  conv_transpose(x, w)  S^T(x; w), its adjoint (the transposed convolution), and its gradients.

S is one 2-D convolution (cross-correlation, as lax's and oneDNN's) of NHWC activations with an
HWIO kernel, with strides and explicit non-negative padding:
  S(x; w)[n, o, f] = sum over taps t, channels c of x[n, stride * o + t - pad_low, c] * w[t, c, f].

Loading is lazy and happens once per process: `available()` loads the library from
`$SEGAE_ONEDNN_LIBRARY` or `build.library_path()`; if that fails it warns once (RuntimeWarning,
naming the file and the reason) and returns False, and segae_jax.models.conv_ops keeps its own
path. Nothing here raises for a missing library.
"""
import ctypes
import functools
import os
import pathlib
import warnings
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from segae_jax.native import build

LIBRARY_ENV = 'SEGAE_ONEDNN_LIBRARY'
FORWARD = 'SegaeOnednnConvForward'
BACKWARD_DATA = 'SegaeOnednnConvBackwardData'
BACKWARD_WEIGHTS = 'SegaeOnednnConvBackwardWeights'
DTYPES = (jnp.float32, jnp.bfloat16)

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def library_path() -> pathlib.Path:
  """$SEGAE_ONEDNN_LIBRARY if set, else where `make install` builds it."""
  return pathlib.Path(os.environ.get(LIBRARY_ENV) or build.library_path())


@functools.lru_cache(maxsize=None)   # Once per process: a library loads and registers once.
def load_error() -> Optional[str]:
  """Load the handler library and register its three targets; None if that worked, else the
  one-line reason (also warned, once, as a RuntimeWarning)."""
  if jax.default_backend() != 'cpu':   # The handlers are CPU custom calls.
    return f'the backend is {jax.default_backend()}, not cpu'
  path = library_path()
  try:
    library = ctypes.CDLL(str(path))
    for name in (FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)),
                                  platform='cpu')
  except (OSError, AttributeError) as e:
    reason = f'{path}: {str(e).splitlines()[0]}'
    warnings.warn(f'oneDNN convolutions unavailable ({reason}); using the XLA/matmul path '
                  '(run `make install` to build them)', RuntimeWarning, stacklevel=3)
    return reason
  return None


def available() -> bool:
  """Whether the oneDNN handlers are loaded and registered (loading them on first call)."""
  return load_error() is None


def supported(x_dtype, w_dtype, padding: Sequence[Tuple[int, int]]) -> bool:
  """Whether S with these operands runs on oneDNN: equal dtypes among DTYPES, padding >= 0."""
  return (jnp.dtype(x_dtype) == jnp.dtype(w_dtype)
          and any(jnp.dtype(x_dtype) == jnp.dtype(d) for d in DTYPES)
          and all(p >= 0 for pair in padding for p in pair))


def output_size(size: int, kernel: int, stride: int, pad: Tuple[int, int]) -> int:
  """S's output length along one axis: floor((size + low + high - kernel) / stride) + 1."""
  return (size + pad[0] + pad[1] - kernel) // stride + 1


def _call(target: str, shape, dtype, a, b, strides, padding):
  reason = load_error()
  if reason:   # Callers check available() first; this is a bug, not a user's input.
    raise RuntimeError(f'oneDNN convolution called without its library ({reason})')
  attrs = dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]),
               pt=np.int64(padding[0][0]), pb=np.int64(padding[0][1]),
               pl=np.int64(padding[1][0]), pr=np.int64(padding[1][1]))
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, dtype))(a, b, **attrs)


# Sharded jit. XLA's partitioner cannot look inside a custom call: left alone it gathers the
# whole batch onto every device and runs the full convolution on each. custom_partitioning tells
# it how these split: over the batch axis, each device convolving its own examples (the kernel
# replicated), and the kernel gradient summed over the devices that hold parts of the batch. The
# other axes are gathered (need_replication), which the training system never shards.
_RULES = {
    FORWARD: ('n h w c, a b c f -> n i j f', ()),
    BACKWARD_DATA: ('n i j f, a b c f -> n h w c', ()),
    BACKWARD_WEIGHTS: ('n h w c, n i j f -> a b c f', ('n',)),
}


def _batch_axes(sharding) -> Optional[object]:
  """The mesh axis (or axes) the leading (batch) dimension is split over, or None."""
  spec = getattr(sharding, 'spec', None)
  return spec[0] if spec else None


def _make_partitioned(target: str):
  """_call for `target` as a custom_partitioning op (static: shape, dtype, strides, padding)."""
  rule, reduction = _RULES[target]
  batched_out = not reduction   # Summing over the batch leaves a result without one.

  def call(a, b, shape, dtype, strides, padding):
    return _call(target, shape, dtype, a, b, strides, padding)

  def shardings(mesh, batch):
    batch_major = NamedSharding(mesh, PartitionSpec(batch, None, None, None))
    replicated = NamedSharding(mesh, PartitionSpec())
    args = (batch_major, replicated if batched_out else batch_major)
    return args, batch_major if batched_out else replicated

  def infer(shape, dtype, strides, padding, mesh, arg_shapes, result_shape):
    del shape, dtype, strides, padding, result_shape
    return shardings(mesh, _batch_axes(arg_shapes[0].sharding))[1]

  def partition(shape, dtype, strides, padding, mesh, arg_shapes, result_shape):
    del result_shape
    batch = _batch_axes(arg_shapes[0].sharding)
    args, result = shardings(mesh, batch)

    def lower(a, b):
      local = (a.shape[0],) + tuple(shape[1:]) if batched_out else shape
      out = _call(target, local, dtype, a, b, strides, padding)
      return out if batched_out or batch is None else jax.lax.psum(out, batch)

    return mesh, lower, result, args

  partitioned = custom_partitioning(call, static_argnums=(2, 3, 4, 5))
  partitioned.def_partition(
      partition, infer_sharding_from_operands=infer, sharding_rule=rule,
      reduction_factors=reduction,
      # Shardy wants them in the order the rule names them.
      need_replication_factors=tuple(dict.fromkeys(
          f for f in rule.replace(',', ' ').replace('->', ' ').split() if f != 'n')))
  return partitioned


_PARTITIONED = {target: _make_partitioned(target) for target in _RULES}


def _op(target: str, shape, dtype, a, b, strides, padding):
  """One handler call, split over the batch under sharded jit (see _make_partitioned)."""
  return _PARTITIONED[target](a, b, tuple(shape), jnp.dtype(dtype), tuple(strides),
                              tuple(map(tuple, padding)))


def _forward(x, w, strides, padding):
  """S(x; w): [n, h, w, c] x [kh, kw, c, f] -> [n, oh, ow, f]."""
  oh, ow = (output_size(x.shape[1 + d], w.shape[d], strides[d], padding[d]) for d in (0, 1))
  return _op(FORWARD, (x.shape[0], oh, ow, w.shape[3]), x.dtype, x, w, strides, padding)


def _backward_data(dy, w, x_hw, strides, padding):
  """S^T(dy; w): [n, oh, ow, f] -> [n, x_hw[0], x_hw[1], c]."""
  return _op(BACKWARD_DATA, (dy.shape[0], *x_hw, w.shape[2]), dy.dtype, dy, w, strides,
             padding)


def _backward_weights(x, dy, kernel_hw, strides, padding):
  """d<S(x; w), dy>/dw: [kh, kw, c, f], dtype of x."""
  return _op(BACKWARD_WEIGHTS, (*kernel_hw, x.shape[3], dy.shape[3]), x.dtype, x, dy,
             strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jnp.ndarray, w: jnp.ndarray, strides: Tuple[int, int],
         padding: Padding) -> jnp.ndarray:
  """S(x; w) on oneDNN.

  Args:
    x: [batch, height, width, in_channels], float32 or bfloat16.
    w: [kh, kw, in_channels, out_channels], the dtype of x.
    strides: (sh, sw) in pixels.
    padding: ((top, bottom), (left, right)) zero padding in pixels, each >= 0.

  Returns:
    [batch, out_height, out_width, out_channels] (`output_size` per axis), the dtype of x.
  """
  return _forward(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
  return _forward(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, dy):
  x, w = residuals
  return (_backward_data(dy, w, x.shape[1:3], strides, padding),
          _backward_weights(x, dy, w.shape[:2], strides, padding))


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(x: jnp.ndarray, w: jnp.ndarray, out_hw: Tuple[int, int],
                   strides: Tuple[int, int], padding: Padding) -> jnp.ndarray:
  """S^T(x; w), the adjoint of S (a transposed convolution, oneDNN's backward-data primitive).

  Args:
    x: [batch, h, w, f], in S's output space.
    w: [kh, kw, c, f], S's kernel (c: the channels this returns).
    out_hw: (height, width) of S's input, which S maps to (h, w).
    strides, padding: S's.

  Returns:
    [batch, out_hw[0], out_hw[1], c], the dtype of x.
  """
  return _backward_data(x, w, out_hw, strides, padding)


def _conv_transpose_fwd(x, w, out_hw, strides, padding):
  return _backward_data(x, w, out_hw, strides, padding), (x, w)


def _conv_transpose_bwd(out_hw, strides, padding, residuals, dy):
  del out_hw
  x, w = residuals
  # <S^T(x; w), dy> = <x, S(dy; w)>: the input gradient is S itself and the kernel gradient is
  # S's, with dy in the role of S's input and x in that of its output gradient.
  return (_forward(dy, w, strides, padding),
          _backward_weights(dy, x, w.shape[:2], strides, padding))


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
