"""Warps by a sampling grid: the geometric strong view (data.views.AffineGrid) applied in the step.

The input pipeline draws only the grid (batch kind 'coords', key 'grid': float32
[n, *S, SPATIAL_RANK], for each pixel of the strong view the coordinates in pixels of the weak
view, 'image', it is taken from). The step warps with it everything that must move together:
the strong image (warp_image, bilinear), the pseudo-labels and the confidences computed on the
weak view (warp_nearest, order 0), and zeroes the confidence of the pixels whose source lies
outside the weak view (inside). Warping in the step instead of in the pipeline keeps one
implementation for the image and its labels, and the weak view's predictions need the step
anyway.

Outside the image warp_image reads 0 (the empty background of the scenes, and the fill of
torchvision's RandomAffine), so a warp never invents object pixels at the border; warp_nearest
reads the nearest edge value (no made-up class id), and callers mask those pixels with inside.

Pure jax, for jit and any batch size; the grid is given per example, so pmap and sharded jit
split it with the batch.
"""
from typing import Sequence

import jax
import jax.numpy as jnp

from segae_jax import batch as batch_lib

# inside's slack in pixels: a rotation by 90 degrees lands a corner at h - 1 + 1e-6 in float32.
INSIDE_TOLERANCE = 1e-3


def identity_grid(shape: Sequence[int]) -> jnp.ndarray:
  """float32 [n, *S, SPATIAL_RANK] of `shape` (n, *S): each pixel's own coordinates (the grid of
  a geometric view that was not applied)."""
  n, spatial = shape[0], tuple(shape[1:1 + batch_lib.SPATIAL_RANK])
  own = jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in spatial],
                               indexing='ij'), axis=-1)
  return jnp.broadcast_to(own, (n,) + own.shape)


def _coordinates(grid: jnp.ndarray) -> list:
  return [grid[..., i] for i in range(batch_lib.SPATIAL_RANK)]


def warp_image(image: jnp.ndarray, grid: jnp.ndarray) -> jnp.ndarray:
  """The image seen through `grid`: out[i, p, :] = image[i] at grid[i, p], bilinear
  (jax.scipy.ndimage.map_coordinates, order 1), 0 outside the image.

  Args:
    image: float [n, *S, c].
    grid: float [n, *S', SPATIAL_RANK], source coordinates in pixels of `image` (S' may differ
      from S).

  Returns:
    [n, *S', c], image's dtype. An integer grid gives image's values exactly.
  """
  def one_channel(x, coordinates):
    return jax.scipy.ndimage.map_coordinates(x, coordinates, order=1, mode='constant', cval=0.0)

  per_channel = jax.vmap(one_channel, in_axes=(-1, None), out_axes=-1)
  return jax.vmap(per_channel)(image, _coordinates(grid))


def warp_nearest(x: jnp.ndarray, grid: jnp.ndarray) -> jnp.ndarray:
  """x seen through `grid`, order 0: out[i, p] = x[i] at the pixel nearest grid[i, p] (halves
  rounded away from 0, as map_coordinates' order 0), the nearest edge pixel outside. For class
  ids, confidences and masks: any dtype, values copied exactly.

  Args:
    x: [n, *S] (or [n, *S, ...]: trailing axes carried along), any dtype.
    grid: float [n, *S', SPATIAL_RANK], source coordinates in pixels of x.

  Returns:
    [n, *S', ...], x's dtype.
  """
  spatial = batch_lib.spatial_shape(x)
  index = [jnp.clip(jnp.sign(c) * jnp.floor(jnp.abs(c) + 0.5), 0, size - 1).astype(jnp.int32)
           for c, size in zip(_coordinates(grid), spatial)]
  examples = jnp.arange(x.shape[0]).reshape((-1,) + (1,) * batch_lib.SPATIAL_RANK)
  return x[(examples, *index)]


def inside(grid: jnp.ndarray) -> jnp.ndarray:
  """float32 [n, *S']: 1 where grid's source coordinate lies inside the image it samples
  ([0, size - 1] on every spatial axis, INSIDE_TOLERANCE pixels of slack), else 0: where a
  warped pseudo-label or confidence means something.

  Args:
    grid: float [n, *S', SPATIAL_RANK], source coordinates in pixels of an image whose spatial
      size is S' (a view the size of the one it is warped from, as data.views.AffineGrid's).
  """
  spatial = grid.shape[1:1 + batch_lib.SPATIAL_RANK]
  ok = [(c >= -INSIDE_TOLERANCE) & (c <= size - 1 + INSIDE_TOLERANCE)
        for c, size in zip(_coordinates(grid), spatial)]
  return jnp.all(jnp.stack(ok, axis=-1), axis=-1).astype(jnp.float32)
