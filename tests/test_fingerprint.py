"""The folder configs' settings inferred from the files (data.fingerprint,
training.validation.resolve_auto), on tiny folders written here; answers computed by hand."""
import json
import os

import numpy as np
import pytest
import tifffile
from absl import flags
from ml_collections import config_flags
from PIL import Image

from conftest import ROOT, set_fields
from segae_jax import training
from segae_jax.data import fingerprint, folder
from segae_jax.errors import UserInputError
from segae_jax.training import validation

# (height, width) of the 5 images of _write_rgb: heights 20 40 30 24 50, widths 30 20 30 36 10.
SIZES = [(20, 30), (40, 20), (30, 30), (24, 36), (50, 10)]


def _write_rgb(root, sizes, labels=(0, 1)):
  """RGB PNGs and their masks (each holding every value of `labels`); returns the folders."""
  rng = np.random.default_rng(0)
  for sub in ('images', 'masks'):
    os.makedirs(root / sub, exist_ok=True)
  for i, (h, w) in enumerate(sizes):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.full((h, w), labels[0], np.uint8)
    mask.ravel()[:len(labels)] = labels
    Image.fromarray(image).save(root / 'images' / f'im{i}.png')
    Image.fromarray(mask).save(root / 'masks' / f'im{i}.png')
  return str(root / 'images'), str(root / 'masks')


def _data(images_dir, masks_dir, **fields):
  """configs/folder.py's config.data (its settings left None) on the folders given."""
  from configs import folder as folder_config
  config = folder_config.get_config().data
  return set_fields(config, {'images_dir': images_dir, 'masks_dir': masks_dir, **fields})


def _run_config(tmp_path, images_dir, masks_dir, **overrides):
  """configs/folder.py shrunk to a 2-step run, every setting the data decides left None."""
  from configs import folder as folder_config
  return set_fields(folder_config.get_config(), {
      'data.images_dir': images_dir, 'data.masks_dir': masks_dir,
      'data.tfds_dir': str(tmp_path / 'tfds'), 'model.features': (8, 16), 'num_train_steps': 2,
      'warmup_steps': 1, 'log_every_steps': 1, 'eval_every_steps': 2,
      'checkpoint_every_steps': 2, 'num_pictures': 1, **overrides})


def test_8_bit_rgb_folder_fingerprint(tmp_path):
  images_dir, masks_dir = _write_rgb(tmp_path, SIZES)
  fp = fingerprint.measure(_data(images_dir, masks_dir), read_masks=True)
  assert fp.num_pairs == 5 and fp.num_folder_test is None
  assert fp.channels == {3: os.path.join(images_dir, 'im0.png')} and list(fp.dtypes) == ['uint8']
  assert (fp.min_size, fp.median_size, fp.max_size) == ((20, 10), (30, 30), (50, 36))
  assert fp.labels == (0, 1)
  values = fingerprint.infer_data(_data(images_dir, masks_dir), fp, factor=8)
  # The median 30x30 rounded down to a multiple of 8; 5 pairs: round(0.2 * 5) = 1 test image.
  assert values == {'num_classes': 2, 'channels': 3, 'normalize': 'unit',
                    'image_size': (24, 24), 'test_fraction': 0.2}
  # center_crop crops, so the window fits the smallest image: 20x10 -> 16x8.
  assert fingerprint.infer_image_size(fp, 8, 'center_crop') == (16, 8)
  # Stored sizes capped at max_size=20 (long side, aspect kept): 13x20 20x10 20x20 13x20 20x4.
  capped = fingerprint.measure(_data(images_dir, masks_dir, max_size=20), read_masks=False)
  assert (capped.min_size, capped.median_size, capped.max_size) == ((13, 4), (20, 20), (20, 20))
  assert capped.labels is None


def test_16_bit_grayscale_tiffs_with_labels_0_and_2_make_3_classes(tmp_path):
  for sub in ('images', 'masks'):
    (tmp_path / sub).mkdir()
  for i in range(4):
    tifffile.imwrite(tmp_path / 'images' / f'cell{i}.tif',
                     np.full((16, 24), 1000 * i, np.uint16))
    mask = np.zeros((16, 24), np.uint8)
    mask[:4, :4] = 2
    Image.fromarray(mask).save(tmp_path / 'masks' / f'cell{i}.png')
  data = _data(str(tmp_path / 'images'), str(tmp_path / 'masks'))
  fp = fingerprint.measure(data, read_masks=True)
  assert list(fp.channels) == [1] and list(fp.dtypes) == ['uint16']
  assert fp.median_size == (16, 24) and fp.labels == (0, 2)
  values = fingerprint.infer_data(data, fp, factor=8)
  assert values['num_classes'] == 3 and values['channels'] == 1
  assert values['normalize'] == 'percentile' and values['image_size'] == (16, 24)


def test_foreground_mode_makes_2_classes_without_reading_the_masks(tmp_path):
  images_dir, masks_dir = _write_rgb(tmp_path, SIZES[:3])
  for i in range(3):  # Instance label images: ids up to 300, 16-bit.
    h, w = SIZES[i]
    ids = np.zeros((h, w), np.uint16)
    ids[:2, :2] = 300
    tifffile.imwrite(os.path.join(masks_dir, f'im{i}.tif'), ids)
    os.remove(os.path.join(masks_dir, f'im{i}.png'))
  data = _data(images_dir, masks_dir, mask_mode='foreground')
  assert not fingerprint.needs_masks(data)
  fp, values = fingerprint.plan(data, 8)
  assert fp.labels is None and values['num_classes'] == 2
  # Read as class ids, label 300 is no class: refused, naming the mask.
  with pytest.raises(UserInputError, match=r'im0\.tif: mask label 300 .*mask_mode=foreground'):
    fingerprint.plan(_data(images_dir, masks_dir), 8)


def test_mixed_channel_counts_are_refused_naming_two_files(tmp_path):
  images_dir, masks_dir = _write_rgb(tmp_path, SIZES[:3])
  Image.fromarray(np.zeros((30, 30), np.uint8)).save(os.path.join(images_dir, 'im2.png'))
  with pytest.raises(UserInputError, match=r'im2\.png: image has 1 channel\(s\) but .*im0\.png'):
    fingerprint.plan(_data(images_dir, masks_dir), 8)
  # Given, the count is not inferred: the builder's own check (naming the file) applies later.
  fingerprint.plan(_data(images_dir, masks_dir, channels=3), 8)


def test_test_fraction_batch_and_eval_batch_fit_the_images_and_devices():
  fp = lambda n: fingerprint.Fingerprint(n, None, {3: 'a'}, {'uint8': 'a'}, (8, 8), (8, 8),
                                         (8, 8))
  assert fingerprint.infer_test_fraction(fp(10), 'd') == 0.2
  assert fingerprint.split_sizes(fp(10), 0.2) == (8, 2)
  assert fingerprint.infer_test_fraction(fp(3), 'd') == 0.2  # round(0.6) = 1 test image.
  assert fingerprint.split_sizes(fp(2), fingerprint.infer_test_fraction(fp(2), 'd')) == (1, 1)
  with pytest.raises(UserInputError, match='1 image/mask pair cannot be split'):
    fingerprint.infer_test_fraction(fp(1), 'd')
  with pytest.raises(UserInputError, match='leave the test split empty'):
    fingerprint.check_split(fp(4), 0.1, 'd')
  # Batches: at most 32 images and 32 * 64 * 64 pixels, a multiple of the devices.
  assert fingerprint.infer_batch_size(8, 0, 4, (48, 48)) == 8
  assert fingerprint.infer_batch_size(100, 0, 4, (48, 48)) == 32
  assert fingerprint.infer_batch_size(100, 0, 1, (256, 256)) == 2
  assert fingerprint.infer_batch_size(7, 0, 4, (48, 48)) == 4
  assert fingerprint.infer_batch_size(8, 16, 4, (48, 48)) == 24  # 16 of the pool + 8 labelled.
  with pytest.raises(UserInputError, match='holds 3 labelled image'):
    fingerprint.infer_batch_size(3, 0, 4, (48, 48))
  assert fingerprint.infer_eval_batch_size(2, 4, (48, 48)) == 4
  assert fingerprint.infer_eval_batch_size(5, 1, (48, 48)) == 5
  assert fingerprint.infer_eval_batch_size(500, 4, (128, 128)) == 8
  # The window divides by the U-Net's 2 ** (levels - 1), SegNet's 2 ** levels, and a patch.
  assert fingerprint.downsampling_multiple(4, True) == 8
  assert fingerprint.downsampling_multiple(4, False) == 16
  assert fingerprint.downsampling_multiple(2, True, patch_size=6) == 6


def test_resolve_fills_what_is_unset_and_explicit_values_win(tmp_path):
  images_dir, masks_dir = _write_rgb(tmp_path, [(48, 48)] * 10, labels=(0, 1, 2))
  config = _run_config(tmp_path, images_dir, masks_dir)
  config.lock()
  resolved = validation.validate_config(config)
  assert config.data.num_classes is None and config.batch_size is None  # Left as it was.
  assert resolved.is_locked
  inferred = {k: resolved.data[k] for k in fingerprint.DATA_FIELDS}
  # 4 devices: 8 training images -> 8 per batch; 2 test images -> one eval batch of 4.
  assert inferred == {'num_classes': 3, 'channels': 3, 'normalize': 'unit',
                      'image_size': (48, 48), 'test_fraction': 0.2}
  assert (resolved.batch_size, resolved.eval_batch_size) == (4 * 2, 4)
  given = {'data.num_classes': 5, 'data.channels': 3, 'data.normalize': 'zscore',
           'data.image_size': (32, 16), 'data.test_fraction': 0.5, 'batch_size': 4,
           'eval_batch_size': 8}
  resolved = validation.validate_config(_run_config(tmp_path, images_dir, masks_dir, **given))
  assert {k: resolved[k] for k in given} == given


def test_command_line_overrides_keep_their_types():
  argv = ['prog', f'--config={os.path.join(ROOT, "configs", "folder.py")}',
          '--config.data.num_classes=3', '--config.data.image_size=64,64',
          '--config.data.channels=1', '--config.data.normalize=zscore',
          '--config.data.test_fraction=0.25', '--config.batch_size=16',
          '--config.eval_batch_size=4']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  config = values.config
  assert (config.data.num_classes, config.data.channels, config.data.normalize) == (3, 1, 'zscore')
  assert tuple(config.data.image_size) == (64, 64) and config.data.test_fraction == 0.25
  assert (config.batch_size, config.eval_batch_size) == (16, 4)


def test_a_batch_larger_than_the_training_split_is_refused_before_preparing(tmp_path):
  images_dir, masks_dir = _write_rgb(tmp_path, [(16, 16)] * 10)
  config = _run_config(tmp_path, images_dir, masks_dir, batch_size=32)
  with pytest.raises(UserInputError) as error:
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  message = str(error.value)
  assert '\n' not in message and 'config.batch_size=32' in message
  assert 'training split holds 8' in message and 'at most 8' in message
  assert not os.path.exists(tmp_path / 'tfds')  # Nothing prepared.
  config = _run_config(tmp_path, images_dir, masks_dir, **{'data.test_fraction': 0.01})
  with pytest.raises(UserInputError, match='leave the test split empty'):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'tfds')


def test_data_build_outside_a_run_infers_the_same_data_settings(tmp_path):
  images_dir, masks_dir = _write_rgb(tmp_path, [(16, 16)] * 4)
  data = _data(images_dir, masks_dir, tfds_dir=str(tmp_path / 'tfds'), cache='memory')
  dataset = folder.load(data)
  assert dataset.num_classes == 2 and dataset.image_shape == (16, 16, 3)
  assert len(dataset.train) == 3 and len(dataset.test) == 1


def test_ten_images_train_with_no_settings_and_config_json_holds_the_inferred_ones(tmp_path):
  images_dir, masks_dir = _write_rgb(tmp_path, [(48, 48)] * 10)
  workdir = str(tmp_path / 'run')
  results = training.train_and_evaluate(_run_config(tmp_path, images_dir, masks_dir), workdir)
  assert results['step'] == 2 and 0 <= results['test']['miou'] <= 1
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    saved = json.load(f)
  assert {k: saved['data'][k] for k in fingerprint.DATA_FIELDS} == {
      'num_classes': 2, 'channels': 3, 'normalize': 'unit', 'image_size': [48, 48],
      'test_fraction': 0.2}
  assert (saved['batch_size'], saved['eval_batch_size']) == (8, 4)
