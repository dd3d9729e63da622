"""The self-trained pixel head's parts (segae_jax.tools.pixel_head): round 2's pseudo-masks by
hand, the folder it writes read back through the project's folder dataset, the round config."""
import ml_collections
import numpy as np
import pytest

from segae_jax.data import folder
from segae_jax.errors import UserInputError
from segae_jax.tools import outputs, pixel_head


def test_pseudo_masks_keep_confident_object_classes_on_the_foreground_only():
  # One image of 1 x 4 pixels, 3 classes (0 background, 1 and 2 objects).
  probabilities = np.array([[[[0.1, 0.8, 0.1],     # Confident class 1.
                              [0.6, 0.1, 0.3],     # Background-heavy, but among the object
                                                   # classes 2 has 0.75 >= 0.7: class 2.
                              [0.2, 0.4, 0.4],     # Object classes tied at 0.5 < 0.7: ignored.
                              [0.1, 0.1, 0.8]]]],  # Off the foreground: background.
                           np.float32)
  foreground = np.array([[[True, True, True, False]]])
  masks = pixel_head.pseudo_masks(probabilities, foreground, threshold=0.7)
  assert masks.dtype == np.uint8
  np.testing.assert_array_equal(masks, [[[1, 2, pixel_head.IGNORE_LABEL, 0]]])


def test_written_folder_reads_back_with_its_ignored_pixels(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.random((6, 8, 8, 1)).astype(np.float32)
  masks = rng.integers(0, 3, (6, 8, 8)).astype(np.uint8)
  masks[:, 0, 0] = pixel_head.IGNORE_LABEL
  root = str(tmp_path / 'data')
  pixel_head.write_folder(root, {'train': zip(images[:4], masks[:4]),
                                 'test': zip(images[4:], masks[4:])})
  dataset = folder.load({'images_dir': f'{root}/images', 'masks_dir': f'{root}/masks',
                         'split': 'folders', 'num_classes': 3, 'image_size': (8, 8),
                         'channels': 1, 'normalize': 'unit', 'test_fraction': 0.2,
                         'ignore_label': pixel_head.IGNORE_LABEL,
                         'tfds_dir': str(tmp_path / 'tfds')})
  test = dataset.test.__getitems__([0, 1])
  # Float32 TIFFs in model units: normalize='unit' keeps them exactly.
  np.testing.assert_array_equal(test['image'], images[4:])
  np.testing.assert_array_equal(test['segmentation'][..., 0], masks[4:])
  assert len(dataset.train) == 4
  # The folder is the head's own output: another head output may replace it, a user's may not.
  assert outputs.check_folder(root, pixel_head.TOOL)
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('mine')
  with pytest.raises(UserInputError, match='mine'):
    pixel_head.write_folder(str(tmp_path / 'mine'), {'train': []})
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'mine'


def test_round_config_points_the_folder_config_at_the_written_data(tmp_path):
  head = ml_collections.ConfigDict({'config': 'folder', 'steps': 7, 'seed': 3,
                                    'overrides': (('batch_size', 32), ('loss.dice', 0.0))})
  config = pixel_head.round_config(head, str(tmp_path / 'round2_data'), 11, (64, 64, 1),
                                   '/runs/ae', ignore=True)
  assert config.data.name == 'segmentation_folder'
  assert config.data.images_dir == str(tmp_path / 'round2_data' / 'images')
  assert (config.data.num_classes, tuple(config.data.image_size), config.data.channels) == (
      11, (64, 64), 1)
  assert config.data.ignore_label == 255 and config.data.normalize == 'unit'
  assert (config.num_train_steps, config.seed, config.init_from) == (7, 3, '/runs/ae')
  assert config.batch_size == 32 and config.loss.dice == 0.0 and config.loss.seg_ce == 1.0
  assert pixel_head.round_config(head, str(tmp_path), 11, (64, 64, 1), '',
                                 ignore=False).data.ignore_label == -1
  bad = ml_collections.ConfigDict({**head.to_dict(), 'overrides': (('loss.dcie', 0.0),)})
  with pytest.raises(UserInputError, match="unknown config key 'loss.dcie'"):
    pixel_head.round_config(bad, str(tmp_path), 11, (64, 64, 1), '', ignore=False)
