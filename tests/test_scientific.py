"""Scientific images: 16-bit and multi-channel TIFF folders (written here with tifffile) read,
stored losslessly, normalised from the training split's statistics (by hand), and trained,
predicted and evaluated end to end with the same normalisation."""
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from configs import unsup_scenes
from conftest import small_config
from segae_jax import data, training
from segae_jax.data import folder, images, normalize
from segae_jax.errors import UserInputError
from segae_jax.tools import common, evaluate, predict, unsupervised


def test_tiff_pages_samples_and_depths_are_read_as_stored(tmp_path):
  rng = np.random.default_rng(0)
  planes = rng.integers(0, 65535, (4, 6, 5), dtype=np.uint16)  # Pages: one per channel.
  tifffile.imwrite(tmp_path / 'pages.tif', planes)
  np.testing.assert_array_equal(images.read_pixels(str(tmp_path / 'pages.tif'), 4),
                                np.moveaxis(planes, 0, -1))
  last = rng.integers(0, 65535, (6, 5, 4), dtype=np.uint16)   # Samples: channels last.
  tifffile.imwrite(tmp_path / 'last.tif', last, photometric='minisblack', planarconfig='contig')
  np.testing.assert_array_equal(images.read_pixels(str(tmp_path / 'last.tif'), 4), last)
  gray = rng.random((6, 5)).astype(np.float64)                # Float: stored as float32.
  tifffile.imwrite(tmp_path / 'gray.tiff', gray)
  read = images.read_pixels(str(tmp_path / 'gray.tiff'), 1)
  assert read.dtype == np.float32 and read.shape == (6, 5, 1)
  np.testing.assert_array_equal(read[..., 0], gray.astype(np.float32))
  with pytest.raises(UserInputError, match=r'pages.tif: image has 4 channel\(s\) \(uint16\) but '
                                           r'config.data.channels is 3'):
    images.read_pixels(str(tmp_path / 'pages.tif'), 3)
  gray[2, 3] = np.nan
  tifffile.imwrite(tmp_path / 'nan.tif', gray.astype(np.float32))
  with pytest.raises(UserInputError, match=r'nan.tif: image has NaN or infinite pixel values'):
    images.read_pixels(str(tmp_path / 'nan.tif'), 1)
  tifffile.imwrite(tmp_path / 'stack.tif', rng.integers(0, 9, (3, 2, 6, 5), dtype=np.uint16))
  with pytest.raises(UserInputError, match=r'stack.tif: image holds 3 frames of 3x2x6x5 pixels'):
    images.read_pixels(str(tmp_path / 'stack.tif'), 2)
  labels = np.zeros((6, 5), np.uint16)
  labels[1:3, 1:4] = 700  # An instance id past 255.
  tifffile.imwrite(tmp_path / 'labels.tif', labels)
  np.testing.assert_array_equal(images.read_label_image(str(tmp_path / 'labels.tif')), labels)
  tifffile.imwrite(tmp_path / 'rgb_labels.tif', np.zeros((6, 5, 3), np.uint8))
  with pytest.raises(UserInputError, match=r'rgb_labels.tif: mask is uint8 with 3 channel\(s\)'):
    images.read_label_image(str(tmp_path / 'rgb_labels.tif'))


def test_statistics_and_normalisations_by_hand():
  statistics = normalize.Statistics(channels=2, num_images=2)
  statistics.add(np.array([[[0, 10], [100, 20]]], np.uint16))      # 1x2 pixels, 2 channels.
  statistics.add(np.array([[[200, 30], [300, 40]]], np.uint16))
  result = statistics.result()
  # Channel 0: 0, 100, 200, 300 -> mean 150, std sqrt((150^2 + 50^2) * 2 / 4) = 111.8034.
  # Channel 1: 10, 20, 30, 40 -> mean 25, std 11.18034. Every pixel is sampled (4 < the cap):
  # percentile 0.5 = 0 + 0.005 * 3 * 100 = 1.5, 99.5 = 300 - 1.5 = 298.5 (linear).
  np.testing.assert_allclose(result['mean'], [150, 25])
  np.testing.assert_allclose(result['std'], [111.80340, 11.180340], rtol=1e-6)
  np.testing.assert_allclose(result['low'], [1.5, 10.15])
  np.testing.assert_allclose(result['high'], [298.5, 39.85])
  pixels = np.array([[[400, 25]]], np.uint16)
  zscore = normalize.Normalization.make('zscore', 'uint16', result)
  np.testing.assert_allclose(zscore(pixels), [[[(400 - 150) / 111.80340, 0.0]]], rtol=1e-6)
  percentile = normalize.Normalization.make('percentile', 'uint16', result)
  np.testing.assert_allclose(percentile(pixels), [[[(298.5 - 150) / 111.80340, 0.0]]], rtol=1e-6)
  unit = normalize.Normalization.make('unit', 'uint16', result)
  np.testing.assert_allclose(unit(pixels), [[[400 / 65535, 25 / 65535]]], rtol=1e-7)
  assert unit.mean == ()  # 'unit' records no statistics.
  import jax.numpy as jnp
  for norm in (zscore, percentile, unit):  # The model function's copy gives the same values.
    np.testing.assert_allclose(np.asarray(norm(pixels.astype(np.float32), jnp)), norm(pixels),
                               rtol=1e-6)
  assert normalize.Normalization.from_dict(zscore.to_dict()) == zscore
  with pytest.raises(UserInputError, match=r"normalize='zscore' needs the training split's "
                                           r'statistics, which old/dataset does not hold'):
    normalize.Normalization.make('zscore', 'uint8', None, 'old/dataset')


def _write_stack_folder(root, n_train=6, size=24):
  """4-channel 16-bit TIFF stacks (pages) with uint16 instance label TIFFs: bright squares are
  the instances, channel 3 is noise; split='folders'."""
  rng = np.random.default_rng(0)
  for split, n in (('train', n_train), ('test', 2)):
    for sub in ('images', 'masks'):
      os.makedirs(root / sub / split, exist_ok=True)
    for i in range(n):
      instances = np.zeros((size, size), np.uint16)
      for k in range(2):
        top, left = rng.integers(0, size - 6, 2)
        instances[top:top + 6, left:left + 6] = 300 + k  # Ids past 255.
      stack = rng.integers(800, 1200, (4, size, size)).astype(np.uint16)
      stack[:3] += (instances > 0).astype(np.uint16) * np.array([20000, 9000, 3000],
                                                                np.uint16)[:, None, None]
      tifffile.imwrite(root / 'images' / split / f'cell{i}.tif', stack)
      tifffile.imwrite(root / 'masks' / split / f'cell{i}.tif', instances)


def test_a_16_bit_4_channel_tiff_folder_trains_predicts_and_evaluates(tmp_path):
  _write_stack_folder(tmp_path)
  config = small_config(str(tmp_path / 'tfds'), 'folder', **{
      'data.images_dir': str(tmp_path / 'images'), 'data.masks_dir': str(tmp_path / 'masks'),
      'data.split': 'folders', 'data.channels': 4, 'data.mask_mode': 'foreground',
      'data.normalize': 'zscore', 'data.image_size': (16, 16), 'model.features': (8, 16),
      'batch_size': 4, 'eval_batch_size': 4, 'num_pictures': 2, 'num_train_steps': 3,
      'eval_every_steps': 3})
  dataset = data.build(config.data)
  # Stored losslessly: the test split's first image is the file's pixels, channels last.
  stored = np.asarray(dataset.test.__getitems__(np.arange(1))['image'][0])
  np.testing.assert_array_equal(stored, np.moveaxis(
      tifffile.imread(tmp_path / 'images' / 'test' / 'cell0.tif'), 0, -1))
  # The statistics are the training split's, by numpy over every pixel of the files.
  pixels = np.concatenate([np.moveaxis(tifffile.imread(tmp_path / 'images' / 'train' / f),
                                       0, -1).reshape(-1, 4)
                           for f in sorted(os.listdir(tmp_path / 'images' / 'train'))])
  np.testing.assert_allclose(dataset.normalization.mean, pixels.mean(0), rtol=1e-9)
  np.testing.assert_allclose(dataset.normalization.std, pixels.std(0), rtol=1e-6)
  workdir = str(tmp_path / 'run')
  results = training.train_and_evaluate(config, workdir)
  assert results['test_resolution'] == 'native' and 0 <= results['test']['miou'] <= 1
  run = common.load_run(workdir, 'latest')
  assert run.normalization == dataset.normalization and run.image_shape == (16, 16, 4)
  # Training's input pipeline and predict's model function normalise alike.
  window = stored[:16, :16]
  batch = dataset.preprocess({'image': window[None]}, None)['image']
  np.testing.assert_allclose(batch[0], dataset.normalization(window), rtol=1e-6)
  logits = run.infer(batch, common.seg_logits, 1)[0]
  import jax
  direct = np.asarray(jax.jit(run.pixel_logits)(run.variables, window[None].astype(np.float32)))
  np.testing.assert_allclose(direct[0], logits, rtol=1e-4, atol=1e-4)
  labels, _ = predict.predict(workdir, str(tmp_path / 'images' / 'test'), str(tmp_path / 'out'),
                              'latest', 4)
  assert labels['cell0'].shape == (24, 24)
  assert sorted(os.listdir(tmp_path / 'out')) == ['.segae_output.json', 'cell0_labels.png',
                                                  'cell0_overlay.png', 'cell1_labels.png',
                                                  'cell1_overlay.png']  # With predict's marker.
  scores = evaluate.evaluate_run(workdir, checkpoint='latest')
  assert scores['mode'] == 'tile'
  assert scores['metrics']['miou'] == pytest.approx(results['test']['miou'], abs=1e-9)
  # Unsupervised regions of the same 16-bit 4-channel files, read and normalised as predict does.
  unsup = unsup_scenes.get_config()
  unsup.update(num_clusters=2, levels=(0, 1), fit_images=2, fit_pixels_per_image=32,
               kmeans_iterations=3, batch_size=4)
  regions = unsupervised.run_unsupervised(workdir, unsup, str(tmp_path / 'images' / 'test'),
                                          str(tmp_path / 'regions'))
  assert regions['num_images'] == 2 and regions['num_tiled'] == 2
  assert np.asarray(Image.open(tmp_path / 'regions' / 'cell0_regions.png')).shape == (24, 24)
  with pytest.raises(UserInputError, match=r'x.tif: 8-bit image \(uint8\), but the run trained '
                                           r'on 16-bit images \(uint16, normalize=zscore\)'):
    os.makedirs(tmp_path / 'eight_bit')
    tifffile.imwrite(tmp_path / 'eight_bit' / 'x.tif', np.zeros((4, 24, 24), np.uint8))
    predict.predict(workdir, str(tmp_path / 'eight_bit'), str(tmp_path / 'out8'), 'latest')
  assert not (tmp_path / 'out8').exists()


def test_a_folder_of_mixed_channel_counts_is_refused_naming_the_file(tmp_path):
  _write_stack_folder(tmp_path, n_train=2)
  tifffile.imwrite(tmp_path / 'images' / 'train' / 'cell1.tif', np.zeros((3, 24, 24), np.uint16))
  config = folder.FolderConfig(images_dir=str(tmp_path / 'images'),
                               masks_dir=str(tmp_path / 'masks'), num_classes=2, channels=4,
                               split='folders', mask_mode='foreground')
  with pytest.raises(UserInputError, match=r'cell1.tif: image has 3 channel\(s\) \(uint16\) but '
                                           r'config.data.channels is 4'):
    folder.prepare(config, str(tmp_path / 'tfds'))
  assert not os.path.exists(tmp_path / 'tfds' / 'segmentation_folder') or not [
      p for p in os.listdir(tmp_path / 'tfds' / 'segmentation_folder')]


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_an_image_folder_of_16_bit_tiffs_trains_an_autoencoder(tmp_path):
  rng = np.random.default_rng(1)
  os.makedirs(tmp_path / 'photos')
  stacks = [rng.integers(0, 65535, (2, 16, 16), dtype=np.uint16) for _ in range(10)]
  for i, stack in enumerate(stacks):
    tifffile.imwrite(tmp_path / 'photos' / f'p{i}.tif', stack)
  config = small_config(str(tmp_path / 'tfds'), 'ae_folder', **{
      'data.images_dir': str(tmp_path / 'photos'), 'data.channels': 2,
      'data.image_size': (16, 16), 'data.test_fraction': 0.4, 'model.features': (4, 8),
      'batch_size': 4, 'eval_batch_size': 4, 'num_pictures': 2, 'num_train_steps': 2,
      'eval_every_steps': 2})
  dataset = data.build(config.data)
  assert dataset.normalization == normalize.Normalization('unit', 'uint16')
  example = np.asarray(dataset.test.__getitems__(np.arange(1))['image'][0])
  batch = dataset.preprocess({'image': example[None]}, [np.random.default_rng(0)])
  np.testing.assert_array_equal(batch['image'][0], example / np.float32(65535))
  results = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(results['test']['loss'])
  assert os.path.isfile(tmp_path / 'run' / 'reconstructions.png')
