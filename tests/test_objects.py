"""Object extraction, windows and painting (segae_jax.tools.objects) on hand-drawn maps."""
import numpy as np
import pytest

from segae_jax.tools import objects


def test_components_fill_holes_drop_specks_and_number_in_raster_order():
  fg = np.zeros((8, 10), bool)
  fg[1:4, 1:4] = True
  fg[2, 2] = False          # A hole: filled, it belongs to the first object.
  fg[5:7, 5:9] = True       # The second object.
  fg[0, 9] = True           # A speck of 1 pixel: below min_pixels, back to background.
  ids, n = objects.components(fg, min_pixels=2)
  expected = np.zeros((8, 10), np.int32)
  expected[1:4, 1:4] = 1
  expected[5:7, 5:9] = 2
  assert n == 2
  np.testing.assert_array_equal(ids, expected)


def test_diagonal_neighbours_are_separate_objects():
  fg = np.zeros((4, 4), bool)
  fg[0, 0] = fg[1, 1] = True   # 4-connectivity: touching corners do not join.
  assert objects.components(fg, min_pixels=1)[1] == 2


def test_window_scales_the_longer_side_and_centres_on_the_fill():
  image = np.full((6, 6, 1), 0.5, np.float32)
  image[1:3, 1:5, 0] = 1.0     # The object: 2 rows x 4 columns.
  image[1, 5, 0] = 0.9         # Inside the box? No: column 5 is outside; ignored anyway.
  mask = np.zeros((6, 6), bool)
  mask[1:3, 1:5] = True
  mask[2, 1] = False           # A pixel of the box outside the object gets the fill.
  out = objects.window(image, mask, (10, 10), side=8, fill=0.25)
  assert out.shape == (10, 10, 1)
  # 2x4 scaled by 2 -> 4x8, centred: rows 3..6, columns 1..8.
  inside = np.zeros((10, 10), bool)
  inside[3:7, 1:9] = True
  np.testing.assert_array_equal(out[~inside, 0], 0.25)
  assert out[3, 7, 0] == pytest.approx(1.0)
  assert out[6, 1, 0] == pytest.approx(0.25)   # The masked-out pixel, scaled up to 2x2.


def test_paint_gives_each_object_its_class():
  ids = np.array([[0, 1, 1], [2, 2, 0]])
  np.testing.assert_array_equal(objects.paint(ids, [3, 5]), [[0, 3, 3], [5, 5, 0]])


def test_object_sizes_follow_the_windows_order():
  first = np.array([[1, 1, 0], [2, 0, 0]])
  second = np.array([[0, 1, 1], [1, 1, 1]])
  np.testing.assert_array_equal(objects.object_sizes([first, np.zeros((2, 3), int), second]),
                                [2, 1, 5])
  assert objects.object_sizes([]).shape == (0,)


def test_likely_singles_are_the_best_reconstructed_of_the_large_components():
  errors = np.array([0.01, 0.50, 0.20, 0.30, 0.40, 0.02])
  sizes = np.array([5, 100, 40, 30, 60, 9])  # The two best reconstructed are small pieces.
  # Large: errors 0.50, 0.20, 0.30, 0.40, whose 0.5 quantile is 0.35: 0.20 and 0.30 are single.
  single = objects.likely_singles(errors, sizes, quantile=0.5, min_pixels=10)
  np.testing.assert_array_equal(single, [False, False, True, True, False, False])
  # Without the floor the pieces come first (0.5 quantile of all six is 0.25).
  np.testing.assert_array_equal(objects.likely_singles(errors, sizes, 0.5, 0),
                                [True, False, True, False, False, True])
  assert not objects.likely_singles(errors, sizes, 0.5, 1000).any()


def test_border_background_is_the_most_common_border_value():
  image = np.zeros((5, 5, 1), np.float32)
  image[0, :2] = 0.7           # Two border pixels of another value.
  image[2, 2] = 1.0            # The centre is not on the border.
  assert objects.border_background(image)[0] == 0.0
  fg = objects.uniform_foreground(image, 0.0)
  assert fg.sum() == 3 and fg[2, 2]


def test_the_label_free_encoders_pipeline_has_no_mask_key(tfds_dir):
  """configs/ae_scenes.py, whose encoder feeds tools.unsupervised: neither split nor the first
  training batch carries 'segmentation' (data.drop_masks)."""
  from conftest import scenes_config
  from segae_jax.data import inputs
  config = scenes_config(tfds_dir, 'ae_scenes')
  dataset = inputs.run_dataset(config)
  assert 'segmentation' not in dataset.train.__getitems__([0])
  assert 'segmentation' not in dataset.test.__getitems__([0])
  batch = next(iter(inputs.train_inputs(config, dataset, {'labeled': []}, 1)))
  assert 'segmentation' not in batch and 'image' in batch


def test_the_object_coders_pipeline_has_no_mask_key(tfds_dir):
  """configs/default.py, the VAE whose codes class the objects: Fashion-MNIST has no masks, and
  of what its batches carry (image, its binarised target, the class label) the loss terms read
  the images alone."""
  from conftest import small_config
  from segae_jax.data import inputs
  from segae_jax.losses import compose
  config = small_config(tfds_dir)
  dataset = inputs.run_dataset(config)
  batch = next(iter(inputs.train_inputs(config, dataset, {'labeled': []}, 1)))
  assert 'segmentation' not in batch and 'segmentation' not in dataset.train.__getitems__([0])
  # Its loss on a batch without the class label: the same value (a term reading it would fail).
  loss_fn = compose.make_loss_fn(dict(config.loss))
  rng = np.random.default_rng(0)
  outputs = {'rec_logits': rng.normal(size=batch['image'].shape).astype(np.float32),
             'mean': rng.normal(size=(len(batch['image']), 32)).astype(np.float32),
             'logvar': rng.normal(size=(len(batch['image']), 32)).astype(np.float32)}
  unlabelled = {k: v for k, v in batch.items() if k != 'label'}
  assert 'label' in batch
  assert float(loss_fn(outputs, batch)[0]) == float(loss_fn(outputs, unlabelled)[0])
