"""The user's own images: image_folder, labelled + unlabelled pools, tiled inference, and short real
trainings of the configs that use them, on image files written here."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import set_fields
from segae_jax import data, losses, training
from segae_jax.data import image_folder, sizing, sources
from segae_jax.errors import UserInputError
from segae_jax.inference import tiling
from segae_jax.tools import common, evaluate


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)
  return str(path)


def _image_dirs(tfds_dir):
  """The prepared image_folder datasets (and incomplete ones) under tfds_dir."""
  root = os.path.join(tfds_dir, 'image_folder')
  return sorted(os.listdir(root)) if os.path.isdir(root) else []


# ---------------------------------------------------------------------------------------------
# image_folder.

def _odd_sized_images(root, n, channels, seed=0):
  """n random images of odd sizes under root, every other one in a subfolder; {key: array}."""
  rng = np.random.default_rng(seed)
  images = {}
  for i in range(n):
    h, w = int(rng.integers(17, 41)), int(rng.integers(17, 41))
    shape = (h, w) if channels == 1 else (h, w, 3)
    key = f'sub/im{i:02d}' if i % 2 else f'im{i:02d}'
    images[key] = rng.integers(0, 256, shape, dtype=np.uint8)
    _write(os.path.join(root, key + ('.png' if i % 3 else '.tif')), images[key])
  return images


def test_image_folder_stores_odd_sizes_recursively_and_splits_seeded(tmp_path):
  images = _odd_sized_images(tmp_path / 'rgb', 10, 3)
  config = {'name': 'image_folder', 'images_dir': str(tmp_path / 'rgb'), 'image_size': (16, 16),
            'channels': 3, 'test_fraction': 0.3, 'tfds_dir': str(tmp_path / 'tfds')}
  ds = data.build(config)
  assert (len(ds.train), len(ds.test), ds.num_classes, ds.image_shape) == (7, 3, 0, (16, 16, 3))
  sources = image_folder.prepare(image_folder.ImageFolderConfig(
      images_dir=config['images_dir'], test_fraction=0.3), config['tfds_dir']).as_data_source()
  keys = {}
  for split in ('train', 'test'):
    stored = sources[split].__getitems__(list(range(len(sources[split]))))
    keys[split] = [e['file_name'].decode() for e in stored]
    for example in stored:  # Stored at its own size, losslessly.
      np.testing.assert_array_equal(example['image'], images[example['file_name'].decode()])
  assert sorted(keys['train'] + keys['test']) == sorted(images) and 'sub/im01' in images
  assert keys['train'] == sorted(keys['train'])
  batch = ds.preprocess(ds.test.__getitems__([0, 1, 2]), data.eval_rngs(0, [0, 1, 2]))
  assert batch['image'].shape == (3, 16, 16, 3) and batch['image'].dtype == np.float32
  first = images[keys['test'][0]]
  np.testing.assert_allclose(batch['image'][0], sizing.resize_image(first, (16, 16)) / 255.0,
                             rtol=1e-6)
  # Another seed picks other test images; the training size is not part of the stored name.
  other = data.build({**config, 'split_seed': 3, 'image_size': (8, 8)})
  assert len(other.test) == 3 and len(_image_dirs(config['tfds_dir'])) == 2


def test_image_folder_grayscale_from_train_and_test_folders(tmp_path):
  train = _odd_sized_images(tmp_path / 'gray' / 'train', 5, 1, seed=1)
  test = _odd_sized_images(tmp_path / 'gray' / 'test', 2, 1, seed=2)
  ds = data.build({'name': 'image_folder', 'images_dir': str(tmp_path / 'gray'),
                   'image_size': (17, 17), 'channels': 1, 'split': 'folders',
                   'resize': 'center_crop', 'tfds_dir': str(tmp_path / 'tfds')})
  assert (len(ds.train), len(ds.test)) == (5, 2)
  assert ds.sizes['train']['min_height'] == min(a.shape[0] for a in train.values())
  batch = ds.preprocess(ds.test.__getitems__([0]), None)
  original = test[sorted(test)[0]]
  top, left = (original.shape[0] - 17) // 2, (original.shape[1] - 17) // 2
  np.testing.assert_allclose(batch['image'][0, ..., 0],
                             original[top:top + 17, left:left + 17] / 255.0, rtol=1e-6)


def _empty_folder(root):
  os.makedirs(root / 'imgs' / 'deep')
  return {}, root / 'imgs', 'no image files'


def _corrupt_file(root):
  _odd_sized_images(root / 'imgs', 4, 3)
  (root / 'imgs' / 'sub').mkdir(exist_ok=True)
  (root / 'imgs' / 'sub' / 'bad.png').write_bytes(b'not a png')
  return {}, root / 'imgs' / 'sub' / 'bad.png', 'cannot read image'


def _gray_in_rgb_folder(root):
  _odd_sized_images(root / 'imgs', 4, 3)
  _write(root / 'imgs' / 'g.png', np.zeros((20, 20), np.uint8))
  return {}, root / 'imgs' / 'g.png', 'config.data.channels is 3'


def _smaller_than_the_crop(root):
  _odd_sized_images(root / 'imgs', 4, 3)
  _write(root / 'imgs' / 'tiny.png', np.zeros((10, 30, 3), np.uint8))
  return {'resize': 'center_crop'}, root / 'imgs' / 'tiny.png', 'smaller than'


@pytest.mark.parametrize('case', [_empty_folder, _corrupt_file, _gray_in_rgb_folder,
                                  _smaller_than_the_crop], ids=lambda c: c.__name__.strip('_'))
def test_image_folder_bad_input_names_the_file_and_writes_nothing(tmp_path, case):
  overrides, offending, text = case(tmp_path)
  with pytest.raises(UserInputError) as error:
    data.build({'name': 'image_folder', 'images_dir': str(tmp_path / 'imgs'),
                'image_size': (16, 16), 'tfds_dir': str(tmp_path / 'tfds'), **overrides})
  message = str(error.value)
  assert str(offending) in message and text in message and '\n' not in message, message
  assert not _image_dirs(str(tmp_path / 'tfds'))


def test_a_prepared_folder_reused_at_a_larger_crop_is_refused(tmp_path):
  _odd_sized_images(tmp_path / 'imgs', 4, 3)
  config = {'name': 'image_folder', 'images_dir': str(tmp_path / 'imgs'), 'image_size': (16, 16),
            'tfds_dir': str(tmp_path / 'tfds'), 'resize': 'center_crop'}
  data.build(config)
  with pytest.raises(UserInputError, match=r"split 'train' \(smallest image\): image is \d+x\d+"):
    data.build({**config, 'image_size': (48, 48)})


# ---------------------------------------------------------------------------------------------
# Labelled + unlabelled pools.

def _labeled_folder(root, n=8, sizes=((24, 32), (32, 24)), seed=0):
  """n RGB images with 3-class masks (images_dir, masks_dir), sizes alternating."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    h, w = sizes[i % len(sizes)]
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (image[..., 0] // 86).astype(np.uint8)  # The class is readable from the red channel.
    _write(root / 'images' / f's{i}.png', image)
    _write(root / 'masks' / f's{i}.png', mask)
  return str(root / 'images'), str(root / 'masks')


def _folder_config(root, **overrides):
  images_dir, masks_dir = _labeled_folder(root)
  _odd_sized_images(root / 'unlabeled', 6, 3, seed=5)
  return {'name': 'segmentation_folder', 'images_dir': images_dir, 'masks_dir': masks_dir,
          'num_classes': 3, 'image_size': (16, 16), 'channels': 3, 'test_fraction': 0.25,
          'unlabeled_dir': str(root / 'unlabeled'), 'tfds_dir': str(root / 'tfds'), **overrides}


@pytest.mark.parametrize('change,text', [
    (lambda root, c: _write(root / 'unlabeled' / 'sub' / 's3.png',
                            np.zeros((20, 20, 3), np.uint8)), 'unlabeled image has a mask'),
    (lambda root, c: c.update(unlabeled_dir=c['images_dir']), 'is also config.data.images_dir'),
    (lambda root, c: c.update(unlabeled_dir=str(root / 'none')) or os.makedirs(root / 'none'),
     'no unlabeled image files'),
])
def test_bad_unlabeled_pool_is_refused_before_anything_is_written(tmp_path, change, text):
  config = _folder_config(tmp_path)
  change(tmp_path, config)
  with pytest.raises(UserInputError, match=text) as error:
    data.build(config)
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'tfds' / 'segmentation_folder').exists()


@pytest.mark.parametrize('value,has_pool,text', [
    (-1, True, 'expected an integer >= 0'), (8, True, 'must be smaller than the batch size 8'),
    (0, True, 'is 0 but config.data.unlabeled_dir is set'), (2, False, 'needs an unlabelled pool'),
    (True, True, 'expected an integer'),
])
def test_unlabeled_per_batch_is_checked(value, has_pool, text):
  with pytest.raises(UserInputError, match=text):
    data.check_unlabeled_per_batch(value, 8, has_pool)
  assert data.check_unlabeled_per_batch(3, 8, True, process_count=1) == 3
  with pytest.raises(UserInputError, match='divide over the 2 processes'):
    data.check_unlabeled_per_batch(3, 8, True, process_count=2)


def _marked(n, value):
  """An in-memory split whose examples say where they come from: image pixels = value + index."""
  images = (value + np.arange(n, dtype=np.uint8))[:, None, None, None] * np.ones((1, 4, 4, 1),
                                                                                 np.uint8)
  return sources.ArraySource({'image': images, 'segmentation': np.ones((n, 4, 4), np.uint8)})


def _first_pixels(images):
  return images[..., 0, 0, 0].astype(int)


def test_mixed_batches_hold_exactly_the_unlabeled_share_in_every_process_slice():
  labeled, unlabeled = _marked(10, 0), sources.ArraySource({'image': _marked(7, 100).arrays['image']})
  keep = lambda examples, rngs: dict(examples)
  whole = data.TrainIterator(labeled, 8, 0, keep, unlabeled=unlabeled, unlabeled_per_batch=4)
  assert whole.batches_per_epoch == 2  # 10 labelled // 4 per batch: epochs count the labelled.
  seen_unlabeled = []
  for _ in range(4):
    batch = next(whole)
    # The labelled part and the pool's share, each on its own: no masks or flags for the pool.
    assert (_first_pixels(batch['image']) < 100).all() and len(batch['image']) == 4
    assert (batch['segmentation'] == 1).all() and 'labeled' not in batch
    assert set(batch['unlabeled']) == {'image'}
    seen_unlabeled += (_first_pixels(batch['unlabeled']['image']) - 100).tolist()
  # The pool is walked permutation after permutation: all 7 before any repeats.
  assert sorted(seen_unlabeled[:7]) == list(range(7))
  # Two processes: each slice holds 2 labelled + 2 unlabelled, and together they make the batch.
  slices = [data.TrainIterator(labeled, 8, 0, keep, process_index=p, process_count=2,
                               unlabeled=unlabeled, unlabeled_per_batch=4) for p in (0, 1)]
  reference = data.TrainIterator(labeled, 8, 0, keep, unlabeled=unlabeled, unlabeled_per_batch=4)
  for _ in range(3):
    parts, whole_batch = [next(s) for s in slices], next(reference)
    for key in ('image', 'unlabeled'):
      together = np.concatenate([p[key]['image'] if key == 'unlabeled' else p[key]
                                 for p in parts])
      expected = whole_batch[key]['image'] if key == 'unlabeled' else whole_batch[key]
      assert all(len(p['image']) == 2 for p in parts)
      np.testing.assert_array_equal(together, expected)
  # pmap's layout: every device gets its share of each part (2 devices: 2 + 2 each).
  devices = next(data.TrainIterator(labeled, 8, 0, keep, num_local_devices=2,
                                    unlabeled=unlabeled, unlabeled_per_batch=4))
  assert devices['image'].shape[:2] == (2, 2) and devices['unlabeled']['image'].shape[:2] == (2, 2)
  state = whole.get_state()
  assert state['unlabeled_per_batch'] == 4
  with pytest.raises(UserInputError, match='unlabeled_per_batch'):
    data.TrainIterator(labeled, 8, 0, keep, unlabeled=unlabeled,
                       unlabeled_per_batch=2).set_state(state)


@pytest.mark.parametrize('seg_term', ['seg_ce', 'dice', 'focal'])
def test_unlabeled_examples_get_zero_segmentation_gradient_and_full_reconstruction_gradient(
    seg_term):
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((4, 8, 8, 1), np.float32),
           'segmentation': rng.integers(0, 3, (4, 8, 8)).astype(np.int32),
           'labeled': np.array([1, 0, 1, 0], np.float32)}
  outputs = {'seg_logits': rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
             'rec_logits': rng.normal(size=(4, 8, 8, 1)).astype(np.float32)}
  loss_fn = losses.make_loss_fn({seg_term: 0.5, 'rec_mse_per_pixel': 0.5})
  grads = jax.grad(lambda o: loss_fn(o, batch)[0])(outputs)
  per_example = lambda g: np.abs(np.asarray(g)).reshape(4, -1).sum(1)
  seg, rec = per_example(grads['seg_logits']), per_example(grads['rec_logits'])
  assert (seg[[1, 3]] == 0).all() and (seg[[0, 2]] > 0).all()
  assert (rec > 0).all()
  # The unlabelled examples' masks do not matter either (their value, not only their gradient).
  other = dict(batch, segmentation=np.where(batch['labeled'][:, None, None] > 0,
                                            batch['segmentation'], 2))
  assert float(loss_fn(outputs, other)[0]) == float(loss_fn(outputs, batch)[0])


# ---------------------------------------------------------------------------------------------
# Tiled inference.

def test_tile_starts_cover_the_axis_and_end_at_the_border():
  assert tiling.starts(10, 4, 0.25) == [0, 3, 6]       # Stride int(4 * 0.75) = 3.
  assert tiling.starts(11, 4, 0.25) == [0, 3, 6, 7]    # The last one moved back to 11 - 4.
  assert tiling.starts(8, 4, 0.0) == [0, 4] and tiling.starts(3, 4, 0.5) == [0]
  weights = tiling.importance_map((5, 7), 'gaussian')
  assert weights[2, 3] == 1.0 and weights.argmax() == 2 * 7 + 3
  np.testing.assert_allclose(weights, weights[::-1, ::-1])
  # sigma = 0.125 x 5 on the first axis: one pixel off centre, exp(-0.5 (1 / 0.625)^2).
  np.testing.assert_allclose(weights[1, 3], np.exp(-0.5 * (1 / 0.625) ** 2), rtol=1e-6)
  assert (tiling.importance_map((5, 7), 'constant') == 1).all()
  # By hand on a 4 x 4 tile (sigma 0.5; x = +-0.5, +-1.5 pixels from the centre), scaled to
  # a peak of 1 and not floored at MONAI's 1e-3 (see tiling.importance_map).
  near, far = np.exp(-0.5 * (0.5 / 0.5) ** 2), np.exp(-0.5 * (1.5 / 0.5) ** 2)
  weights = tiling.importance_map((4, 4), 'gaussian')
  np.testing.assert_allclose(weights[1, 1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(weights[0, 1], far / near, rtol=1e-6)
  np.testing.assert_allclose(weights[0, 0], (far / near) ** 2, rtol=1e-6)  # 3.4e-4 < 1e-3.


def test_blending_at_a_tile_corner_by_hand():
  """Two 4 x 4 tiles across a 4 x 6 image (overlap 0.5: starts 0 and 2), each answering its
  first column's value (0 and 2): at the top-left corner of the second tile the blend is
  (0 w(0, 2) + 2 w(0, 0)) / (w(0, 2) + w(0, 0)). (MONAI's 1e-3 floor would give 0.258.)"""
  image = np.tile(np.arange(6, dtype=np.float32), (4, 1))[..., None]
  first_column = lambda tiles: np.broadcast_to(tiles[:, :1, :1], tiles.shape)
  blended = tiling.Tiling((4, 4), 0.5, 'gaussian').apply(first_column, image)
  near, far = np.exp(-0.5 * (0.5 / 0.5) ** 2), np.exp(-0.5 * (1.5 / 0.5) ** 2)
  w_first, w_second = far / near, (far / near) ** 2  # Tile 1 at its (0, 2); tile 2 at (0, 0).
  np.testing.assert_allclose(blended[0, 2, 0], 2 * w_second / (w_first + w_second), rtol=1e-5)


def _box_filter(images):
  """A 5x5 mean with zero padding: exact away from a tile's border, wrong near it (as a
  convolutional network is)."""
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  h, w = images.shape[1:3]
  return sum(padded[:, i:i + h, j:j + w] for i in range(5) for j in range(5)) / 25.0


def test_tiles_reassemble_pointwise_functions_exactly_and_blending_hides_the_seams():
  rng = np.random.default_rng(0)
  image = rng.random((50, 70, 2), np.float32)
  for blend in tiling.BLENDS:
    for overlap in (0.0, 0.5):
      tiles = tiling.Tiling((16, 24), overlap, blend, batch_size=3)
      np.testing.assert_allclose(tiles.apply(lambda t: 2 * t + 1, image), 2 * image + 1,
                                 rtol=1e-6)
  truth = _box_filter(image[None])[0]
  # Seam error: away from the image's own border, where only tiling makes the filter wrong.
  inner = (slice(4, -4), slice(4, -4))
  error = lambda t: np.abs(t.apply(_box_filter, image) - truth)[inner].max()
  seams = error(tiling.Tiling((16, 24), 0.0, 'constant'))
  averaged = error(tiling.Tiling((16, 24), 0.25, 'constant'))
  blended = error(tiling.Tiling((16, 24), 0.25, 'gaussian'))   # The default.
  assert seams > 0.15 and averaged > 0.15, (seams, averaged)  # Measured 0.43, 0.25.
  assert blended < 0.25 * averaged, (averaged, blended)       # Measured 0.03.
  # An image smaller than the tile is padded with zeros on both sides, as MONAI pads it (11
  # rows: 5 before, 6 after; 15 columns: 7 before, 8 after), and cropped back.
  small = rng.random((5, 9, 2), np.float32)
  padded = np.pad(small, ((5, 6), (7, 8), (0, 0)))
  np.testing.assert_allclose(tiling.Tiling((16, 24)).apply(_box_filter, small),
                             _box_filter(padded[None])[0, 5:10, 7:16], rtol=1e-6)


def test_tiled_prediction_of_a_tile_sized_image_is_the_plain_forward_pass(unet_scenes_run):
  workdir, _ = unet_scenes_run
  run = common.load_run(workdir, 'latest')
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, run.image_shape, dtype=np.uint8)
  pixels = image / np.float32(255)
  plain = run.infer(pixels[None], common.seg_logits, 1)[0]
  tiles = run.make_tiling(common.Inference(mode='tile'), 4)
  np.testing.assert_allclose(tiles.apply(run.jit(common.seg_logits), pixels), plain, rtol=1e-5,
                             atol=1e-5)
  labels = common.segment_images(run, [image], common.Inference(mode='tile'), 4)[0]
  np.testing.assert_array_equal(labels, plain.argmax(-1))
  # A large image: auto tiles it and returns labels of its own size.
  large = rng.integers(0, 256, (70, 45, 1), dtype=np.uint8)
  assert run.uses_tiles(common.Inference(), 70, 45)
  assert common.segment_images(run, [large], common.Inference(), 4)[0].shape == (70, 45)
  with pytest.raises(UserInputError, match='--tile_size=31x31: image size 31x31 is not divisible'):
    run.make_tiling(common.Inference(tile_size='31x31'), 4)
  assert run.make_tiling(common.Inference(tile_size='48'), 4).tile == (48, 48)
  with pytest.raises(UserInputError, match=r'--overlap=1.0: expected a fraction in \[0, 1\)'):
    common.Inference(overlap=1.0)


# ---------------------------------------------------------------------------------------------
# Short real trainings of the new configs.

def _fashion_mnist_pngs(fashion_mnist, root, n):
  """The first n real Fashion-MNIST test images as 28x28 grayscale PNGs."""
  images = fashion_mnist.test.__getitems__(np.arange(n))['image'][..., 0]
  for i, image in enumerate(images):
    _write(root / f'c{i % 3}' / f'{i:04d}.png', image)
  return str(root)


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
@pytest.mark.parametrize('config_file', ['vae_folder', 'ae_folder'])
def test_autoencoder_folder_configs_train_on_real_images(tmp_path, fashion_mnist, config_file):
  import importlib
  config = importlib.import_module(f'configs.{config_file}').get_config()
  set_fields(config, {
      'data.images_dir': _fashion_mnist_pngs(fashion_mnist, tmp_path / 'pngs', 40),
      'data.tfds_dir': str(tmp_path / 'tfds'), 'data.channels': 1, 'data.image_size': (16, 16),
      'model.features': (8, 16), 'model.latent_dim': 4, 'model.hidden_dim': 16,
      'batch_size': 8, 'num_train_steps': 3, 'warmup_steps': 1, 'eval_every_steps': 3,
      'checkpoint_every_steps': 3, 'log_every_steps': 3, 'eval_batch_size': 8,
      'num_pictures': 4})
  results = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['dataset'] == 'image_folder' and results['step'] == 3
  assert np.isfinite(results['test']['loss']) and 'psnr' in results['test']
  assert os.path.isfile(tmp_path / 'run' / 'reconstructions.png')


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_semisupervised_folder_config_trains_and_scores_at_native_resolution(tmp_path):
  import importlib
  config = importlib.import_module('configs.segae_folder_semisup').get_config()
  data_config = _folder_config(tmp_path)
  set_fields(config, {**{f'data.{k}': v for k, v in data_config.items() if k != 'name'},
                      'data.unlabeled_per_batch': 4, 'model.features': (8, 16),
                      'batch_size': 8, 'num_train_steps': 3, 'warmup_steps': 1,
                      'eval_every_steps': 3, 'checkpoint_every_steps': 3, 'log_every_steps': 3,
                      'eval_batch_size': 4, 'num_pictures': 2})
  workdir = str(tmp_path / 'run')
  results = training.train_and_evaluate(config, workdir)
  assert 0.0 <= results['test']['miou'] <= 1.0
  # The test images (24x32 and 32x24) are larger than the model's 16x16: scored tiled, against
  # their own masks.
  tiled = evaluate.evaluate_run(workdir, inference=common.Inference(), batch_size=4)
  assert tiled['mode'] == 'tile' and 0.0 <= tiled['metrics']['miou'] <= 1.0
  pixels = sum(row['pixels'] for row in tiled['metrics']['per_class'].values())
  assert pixels == 2 * 24 * 32  # The 2 test images at their own size.
  assert np.sum(tiled['confusion_matrix']['counts']) == pixels
  assert os.path.exists(os.path.join(workdir, 'confusion_matrix_test.png'))
  # (--mode=resize is training's own evaluation: test_segmentation.py checks it equals the run's.)
