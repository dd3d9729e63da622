"""Copy-paste scenes (segae_jax.tools.composites) built by hand."""
import numpy as np
import pytest

from segae_jax.tools import composites


class _Fixed:
  """A generator replaying chosen draws, so the expected scene can be drawn by hand."""

  def __init__(self, draws):
    self.draws = list(draws)

  def integers(self, *args):
    return self.draws.pop(0)


def test_later_objects_occlude_earlier_ones_and_carry_their_class():
  square = (np.full((2, 2, 1), 0.5, np.float32), np.ones((2, 2), bool), 3)
  ell_mask = np.array([[1, 0], [1, 1]], bool)
  ell = (np.full((2, 2, 1), 0.9, np.float32), ell_mask, 7)
  # Object 0 (square) at (0, 0), then object 1 (ell) at (1, 1).
  image, classes = composites.compose([square, ell], (4, 4, 1), 2, _Fixed([0, 0, 0, 1, 1, 1]),
                                      np.zeros(1, np.float32))
  expected = np.array([[3, 3, 0, 0],
                       [3, 7, 0, 0],
                       [0, 7, 7, 0],
                       [0, 0, 0, 0]])
  np.testing.assert_array_equal(classes, expected)
  np.testing.assert_allclose(image[..., 0], np.where(expected == 3, 0.5,
                                                     np.where(expected == 7, 0.9, 0.0)), rtol=1e-6)


def test_the_background_is_the_fill_and_a_seeded_scene_repeats():
  obj = (np.ones((3, 3, 2), np.float32), np.eye(3, dtype=bool), 1)
  fill = np.array([0.1, 0.2], np.float32)
  a = composites.compose([obj], (8, 8, 2), 3, np.random.default_rng(5), fill)
  b = composites.compose([obj], (8, 8, 2), 3, np.random.default_rng(5), fill)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[0][a[1] == 0], np.tile(fill, ((a[1] == 0).sum(), 1)))


def test_an_object_larger_than_the_scene_is_refused():
  obj = (np.ones((5, 2, 1), np.float32), np.ones((5, 2), bool), 1)
  with pytest.raises(ValueError, match='larger than the scene'):
    composites.compose([obj], (4, 4, 1), 1, np.random.default_rng(0), np.zeros(1))
