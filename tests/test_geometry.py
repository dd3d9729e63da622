"""Warps by a sampling grid (training.objectives.geometry): the geometric strong view moves the
image, its pseudo-labels and its confidences together."""
import jax
import jax.numpy as jnp
import numpy as np

from segae_jax import data
from segae_jax.data import views
from segae_jax.training.objectives import geometry

SIZE = (9, 7)


def _labels(n=3, classes=5, size=SIZE):
  return np.random.default_rng(0).integers(0, classes, (n,) + size).astype(np.int32)


def test_the_identity_grid_returns_the_input_exactly():
  image = np.random.default_rng(1).random((2,) + SIZE + (3,), dtype=np.float32)
  labels = _labels(2)
  grid = geometry.identity_grid(labels.shape)
  assert grid.shape == (2,) + SIZE + (2,) and grid.dtype == jnp.float32
  np.testing.assert_array_equal(jax.jit(geometry.warp_image)(image, grid), image)
  np.testing.assert_array_equal(geometry.warp_nearest(labels, grid), labels)
  np.testing.assert_array_equal(geometry.inside(grid), np.ones((2,) + SIZE))
  own = views.AffineGrid(prob=0.0)({'image': image}, data.ExampleRngs(0, 1, 0, range(2)))['grid']
  np.testing.assert_array_equal(own, grid)


def test_a_translation_by_k_pixels_moves_values_by_k():
  image = np.random.default_rng(2).random((1,) + SIZE + (1,), dtype=np.float32)
  labels = _labels(1)
  k = (2, -3)  # Down 2 rows, left 3 columns: out[r, c] = in[r - 2, c + 3].
  grid = geometry.identity_grid(labels.shape) - jnp.array(k, jnp.float32)
  warped, moved = geometry.warp_image(image, grid), geometry.warp_nearest(labels, grid)
  np.testing.assert_array_equal(warped[0, 2:, :-3], image[0, :-2, 3:])
  np.testing.assert_array_equal(moved[0, 2:, :-3], labels[0, :-2, 3:])
  assert (np.asarray(warped)[0, :2] == 0).all() and (np.asarray(warped)[0, :, -3:] == 0).all()
  inside = np.zeros((1,) + SIZE, np.float32)
  inside[0, 2:, :-3] = 1
  np.testing.assert_array_equal(geometry.inside(grid), inside)


def test_a_rotation_by_90_degrees_by_hand():
  """AffineGrid's formula at +90 degrees (counter-clockwise on screen) on a 3 x 3 array."""
  a = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 0]], np.int32)
  view = views.AffineGrid(prob=1.0, scale=0.0, rotation=90.0, translation=0.0)

  class Ninety:  # The view's draws: applied, factor 1, angle +90 degrees, no shift.
    def __init__(self):
      self.draws = iter([0.0, 1.0, 90.0, 0.0, 0.0])

    def random(self):
      return next(self.draws)

    def uniform(self, low, high):
      del low, high
      return next(self.draws)

  grid = view.grid(3, 3, Ninety())[None]
  want = np.array([[3, 6, 0], [2, 5, 8], [1, 4, 7]], np.int32)
  np.testing.assert_array_equal(geometry.warp_nearest(a[None], grid)[0], want)
  np.testing.assert_allclose(geometry.warp_image(a[None, ..., None].astype(np.float32),
                                                 grid)[0, ..., 0], want, atol=1e-5)
  np.testing.assert_array_equal(geometry.inside(grid), np.ones((1, 3, 3)))


def test_labels_and_an_image_of_the_labels_warp_alike():
  """Where the source lies inside, the image whose values are the class ids, warped bilinearly
  and rounded, is the label map warped by order 0: on integer grids everywhere, on the view's
  random grids wherever the four pixels around the source share one class."""
  labels = np.repeat(np.repeat(_labels(4, size=(5, 4)), 3, axis=1), 3, axis=2)  # 15 x 12.
  image = labels[..., None].astype(np.float32)
  rng = np.random.default_rng(3)
  integer = rng.integers(-3, 16, labels.shape + (2,)).astype(np.float32)
  affine = views.AffineGrid(prob=1.0, scale=0.3, rotation=30.0, translation=0.2)(
      {'image': image}, data.ExampleRngs(0, 1, 0, range(4)))['grid']
  for grid, uniform in ((integer, None), (affine, _one_class_around(labels, affine))):
    warped = jax.jit(geometry.warp_image)(image, grid)[..., 0]
    moved = jax.jit(geometry.warp_nearest)(labels, grid)
    keep = np.asarray(geometry.inside(grid)) == 1
    if uniform is not None:
      keep &= uniform
    assert keep.sum() > 100
    np.testing.assert_array_equal(np.round(warped)[keep], moved[keep])
    assert moved.dtype == jnp.int32
  # A broken warp (the labels transposed) would not pass: the test sees the geometry.
  assert not np.array_equal(geometry.warp_nearest(labels, affine), labels)


def _one_class_around(labels, grid):
  """bool [n, h, w]: the four pixels around each source coordinate share one class."""
  n, h, w = labels.shape
  low = np.clip(np.floor(grid).astype(int), 0, [h - 1, w - 1])
  high = np.clip(low + 1, 0, [h - 1, w - 1])
  i = np.arange(n)[:, None, None]
  corners = [labels[i, r[..., 0], c[..., 1]] for r in (low, high) for c in (low, high)]
  return np.all([corner == corners[0] for corner in corners], axis=0)


def test_confidences_and_masks_keep_their_dtype_and_values():
  grid = jnp.asarray(np.random.default_rng(4).uniform(-2, 10, (2,) + SIZE + (2,)), jnp.float32)
  confidence = np.random.default_rng(5).random((2,) + SIZE, dtype=np.float32)
  mask = confidence > 0.5
  warped = geometry.warp_nearest(confidence, grid)
  assert set(np.asarray(warped).ravel()) <= set(confidence.ravel())
  assert geometry.warp_nearest(mask, grid).dtype == jnp.bool_
  assert geometry.inside(grid).dtype == jnp.float32
  assert 0 < float(geometry.inside(grid).mean()) < 1


def test_order_0_takes_the_nearest_pixel():
  labels = _labels(1)
  grid = geometry.identity_grid(labels.shape)
  np.testing.assert_array_equal(geometry.warp_nearest(labels, grid + 0.4), labels)
  np.testing.assert_array_equal(geometry.warp_nearest(labels, grid + 0.6)[0, :-1, :-1],
                                labels[0, 1:, 1:])
  np.testing.assert_array_equal(geometry.warp_nearest(labels, grid - 0.6)[0, 1:, 1:],
                                labels[0, :-1, :-1])
