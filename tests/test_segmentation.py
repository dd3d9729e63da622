"""Segmentation end to end on real fashion_mnist_scenes: train, evaluate, predict, semi-supervised."""
import json
import os
import shutil
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import (ROOT, assert_trees_equal, saved_state, scenes_config, small_config,
                      unet_run_config)
from segae_jax.training import checkpoints
from segae_jax import data, training
from segae_jax.tools import common, confusion, evaluate, predict
from segae_jax.errors import UserInputError
from segae_jax.data import augment, sizing
from segae_jax.data import fashion_mnist as fm

def test_unet_scenes_end_to_end(unet_scenes_run):
  workdir, results = unet_scenes_run
  test = results['test']
  assert 0.0 <= test['miou'] <= 1.0 and 0.0 <= test['pixel_accuracy'] <= 1.0
  assert list(test['per_class']) == ['background'] + list(fm.CLASS_NAMES)
  # Every test pixel is counted once: 32 scenes of 32x32.
  assert sum(row['pixels'] for row in test['per_class'].values()) == 32 * 32 * 32
  assert os.listdir(os.path.join(workdir, 'checkpoints_best')) != []
  picture = np.asarray(Image.open(os.path.join(workdir, 'segmentation.png')))
  assert picture.shape == (4 * 34 + 2, 3 * 34 + 2, 3)  # image | truth | prediction, 4 rows.
  records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert any('test/iou/background' in r for r in records)


def _steps(workdir, directory):
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, directory))
  steps = ckpt.all_steps()
  ckpt.close()
  return steps


@pytest.fixture(scope='module')
def unet_jit_run(tmp_path_factory, tfds_dir):
  """The shared U-Net run's config under sharded jit."""
  workdir = str(tmp_path_factory.mktemp('seg_jit') / 'unet')
  return workdir, training.train_and_evaluate(unet_run_config(tfds_dir, parallel='jit'), workdir)


# Under sharded jit the fixture trains a second run (about 12 s): in make test-faults, beside
# the killed-run resumes; the default suite resumes the pmap run.
@pytest.mark.parametrize('strategy', ['pmap', pytest.param('jit', marks=pytest.mark.faults)])
def test_scenes_unet_resume_is_bit_identical(strategy, tfds_dir, tmp_path, request):
  """The 4-step U-Net run (BatchNorm, flip + crop, half the masks hidden, best checkpoint)
  against a copy that lost everything after step 2 and is re-run: the same step-4 checkpoint
  (parameters, optimizer state, BatchNorm statistics, key), best checkpoint and test metrics."""
  workdir, results = request.getfixturevalue(
      'unet_scenes_run' if strategy == 'pmap' else 'unet_jit_run')
  copy = str(tmp_path / 'resumed')
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('eval_*', 'detect*', 'results.json'))
  shutil.rmtree(os.path.join(copy, 'checkpoints', '4'))  # As if killed between steps 2 and 4.
  if os.path.isdir(os.path.join(copy, 'checkpoints_best', '4')):
    shutil.rmtree(os.path.join(copy, 'checkpoints_best', '4'))
  resumed = training.train_and_evaluate(unet_run_config(tfds_dir, parallel=strategy), copy)
  assert (resumed['resumed_from_step'], resumed['step']) == (2, 4)
  original_state = saved_state(workdir, 4)
  assert original_state['train_state']['batch_stats']  # BatchNorm statistics are in it.
  assert_trees_equal(saved_state(copy, 4), original_state)
  best = _steps(workdir, 'checkpoints_best')
  assert _steps(copy, 'checkpoints_best') == best and len(best) == 1
  assert_trees_equal(saved_state(copy, best[0], 'checkpoints_best'),
                     saved_state(workdir, best[0], 'checkpoints_best'))
  assert resumed['test'] == results['test']


def _run_module(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_evaluate_cli_reproduces_training_metrics(unet_scenes_run):
  workdir, results = unet_scenes_run
  proc = _run_module('segae_jax.tools.evaluate', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'background' in proc.stdout and 'miou=' in proc.stdout
  evaluated = json.load(open(os.path.join(workdir, 'eval_test.json')))
  # The best checkpoint holds the step whose test mIoU was highest.
  best = max((r for r in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
              if 'test/miou' in r), key=lambda r: r['test/miou'])
  assert evaluated['checkpoint'] == 'best' and evaluated['step'] == best['step']
  # The evaluation training ran (same strategy and batches): the same numbers exactly.
  assert evaluated['metrics']['miou'] == best['test/miou']
  assert evaluated['metrics']['pixel_accuracy'] == best['test/pixel_accuracy']
  # The confusion matrix: its rows are each class's pixels, its trace the correct ones.
  matrix = evaluated['confusion_matrix']
  counts = np.array(matrix['counts'])
  per_class = evaluated['metrics']['per_class']  # Keys sorted by name in the JSON.
  assert sorted(matrix['classes']) == sorted(per_class)
  assert counts.sum(1).tolist() == [per_class[name]['pixels'] for name in matrix['classes']]
  assert np.trace(counts) / counts.sum() == pytest.approx(evaluated['metrics']['pixel_accuracy'])
  picture = np.asarray(Image.open(os.path.join(workdir, 'confusion_matrix_test.png')))
  np.testing.assert_array_equal(picture, confusion.picture(counts, matrix['classes']))


def test_confusion_picture_colours_rows_by_their_fractions():
  counts = np.array([[3, 1, 0], [0, 4, 0], [2, 0, 2]])
  names = ['background', 'bag', 'shirt']
  np.testing.assert_allclose(confusion.row_normalised(counts),
                             [[0.75, 0.25, 0], [0, 1, 0], [0.5, 0, 0.5]])
  picture = confusion.picture(counts, names)
  colour = lambda fraction: np.round(255 + fraction * (confusion.COLOUR - 255))
  for (true, predicted), fraction in {(0, 0): 0.75, (0, 1): 0.25, (1, 1): 1.0,
                                      (2, 1): 0.0, (2, 2): 0.5}.items():
    np.testing.assert_array_equal(picture[confusion.cell_corner(names, true, predicted)],
                                  colour(fraction))
  assert confusion.as_json(np.zeros((2, 2)), ['a', 'b'])['row_normalised'] == [[0, 0], [0, 0]]


def test_predict_cli_writes_masks_of_input_sizes(unet_scenes_run, tmp_path):
  workdir, _ = unet_scenes_run
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  sizes = {'a.png': (40, 50, 'RGB'), 'b.jpg': (20, 20, 'L'), 'c.tif': (33, 31, 'L')}
  for name, (h, w, mode) in sizes.items():
    shape = (h, w, 3) if mode == 'RGB' else (h, w)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / name)
  (folder / 'notes.txt').write_text('not an image, and not listed as one')
  out = tmp_path / 'out'
  proc = _run_module('segae_jax.tools.predict', f'--workdir={workdir}', f'--input={folder}',
                     f'--output={out}', '--mode=resize')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith(f'segmented 3 images into {out}')
  # The model's own argmax, computed here from the restored run on the resized image.
  run = common.load_run(workdir)
  height, width, channels = run.image_shape
  classes_seen = set()
  for name, (h, w, _) in sizes.items():
    stem = name.split('.')[0]
    labels = np.asarray(Image.open(out / f'{stem}_labels.png'))
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    image = np.asarray(Image.open(folder / name).convert('L' if channels == 1 else 'RGB'))
    x = sizing.resize_image(image.reshape(h, w, channels), (height, width)) / np.float32(255)
    logits = run.model.apply(run.variables, x.reshape(1, height, width, channels))['seg_logits']
    expected = np.asarray(logits[0].argmax(-1)).astype(np.uint8)
    np.testing.assert_array_equal(labels, sizing.resize_mask(expected, (h, w)))
    classes_seen |= set(np.unique(labels).tolist())
    assert np.asarray(Image.open(out / f'{stem}_overlay.png')).shape == (h, w, 3)
  # By default (auto) images larger than the model's input are tiled, the others resized.
  tiled, _ = predict.predict(workdir, str(folder), str(tmp_path / 'auto'))
  np.testing.assert_array_equal(tiled['b'], np.asarray(Image.open(out / 'b_labels.png')))
  assert tiled['a'].shape == (40, 50) and tiled['c'].shape == (33, 31)
  assert len(classes_seen) > 1, classes_seen  # Not a constant map that any model would give.


def test_predict_and_evaluate_refuse_bad_input(unet_scenes_run, tmp_path):
  workdir, _ = unet_scenes_run
  bad = tmp_path / 'fake.png'
  bad.write_bytes(b'definitely not a PNG')
  proc = _run_module('segae_jax.tools.predict', f'--workdir={workdir}', f'--input={bad}',
                     f'--output={tmp_path / "out"}')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1
  assert f'{bad}: cannot read image' in proc.stderr
  assert not (tmp_path / 'out').exists()
  empty = tmp_path / 'empty_run'
  empty.mkdir()
  (empty / 'config.json').write_text(open(os.path.join(workdir, 'config.json')).read())
  # The commands' other refusals in-process (each command prints its UserInputError as above).
  with pytest.raises(UserInputError, match='has no checkpoint'):
    evaluate.evaluate_run(str(empty))
  with pytest.raises(UserInputError, match='has no checkpoint'):
    predict.predict(str(empty), str(bad), str(tmp_path / 'o'))
  with pytest.raises(UserInputError, match='is not a training workdir'):
    evaluate.evaluate_run(str(tmp_path / 'nowhere'))
  assert not (tmp_path / 'o').exists()


def test_labeled_fraction_is_deterministic_and_masks_only_segmentation(tfds_dir):
  config = scenes_config(tfds_dir)
  dataset = data.build(config.data)
  a = data.with_labeled_fraction(dataset, 0.25, seed=3)
  b = data.with_labeled_fraction(dataset, 0.25, seed=3)
  flags = a.train.values
  assert flags.sum() == 16 and set(np.unique(flags)) == {0.0, 1.0}
  np.testing.assert_array_equal(flags, b.train.values)
  assert not np.array_equal(flags, data.with_labeled_fraction(dataset, 0.25, 4).train.values)
  batch = next(data.TrainIterator(a.train, 64, 0, a.preprocess))
  assert batch['labeled'].sum() == 16 and batch['segmentation'].shape == (64, 32, 32)
  test_batch = next(data.eval_batches(a.test, 8, a.preprocess))
  assert 'labeled' not in test_batch  # Every test mask counts.


@pytest.mark.parametrize('config_file', [  # Longer end-to-end checks: make test-faults, test-slow.
    pytest.param('segae_scenes', marks=pytest.mark.faults),
    pytest.param('vaeunet_scenes', marks=pytest.mark.slow)])
def test_joint_models_train_semi_supervised(tmp_path, tfds_dir, config_file):
  config = scenes_config(tfds_dir, config_file, labeled_fraction=0.25, num_train_steps=2,
                         eval_every_steps=2)
  results = training.train_and_evaluate(config, str(tmp_path / config_file))
  test = results['test']
  assert 0 <= test['miou'] <= 1 and test['psnr'] > 0 and np.isfinite(test['rec_mse_per_pixel'])
  assert ('kl_per_pixel' in test) == (config_file == 'vaeunet_scenes')
  lines = [json.loads(l) for l in open(tmp_path / config_file / 'metrics.jsonl')]
  assert all(np.isfinite(r['train/loss']) for r in lines if 'train/loss' in r)


def test_augmentation_moves_image_and_mask_together():
  rng = np.random.default_rng(0)
  image = rng.integers(1, 255, (6, 16, 16, 1), dtype=np.uint8)
  mask = (image[..., 0] // 64).astype(np.uint8)  # The mask is a function of the pixel value.
  examples = {'image': image, 'segmentation': mask}
  rngs = lambda seed: data.ExampleRngs(seed, 1, 0, range(6))  # One generator per example.
  flipped = augment.random_flip(examples, rngs(1))
  assert (flipped['segmentation'] == flipped['image'][..., 0] // 64).all()
  assert any((flipped['image'][i] == image[i, :, ::-1]).all() for i in range(6))
  cropped = augment.random_resized_crop(examples, rngs(2), 0.3)
  assert cropped['image'].shape == image.shape and cropped['segmentation'].shape == mask.shape
  assert set(np.unique(cropped['segmentation'])) <= set(np.unique(mask))  # Nearest: no new labels.
  floats = {'image': image.astype(np.float32) / 255, 'segmentation': mask}
  jittered = augment.brightness_contrast(floats, rngs(3), 0.2, 0.2)
  assert jittered['image'].min() >= 0 and jittered['image'].max() <= 1
  assert not np.allclose(jittered['image'], floats['image'])
  np.testing.assert_array_equal(jittered['segmentation'], mask)
  wrapped = augment.with_augmentation(lambda ex, r: dict(ex), {'flip': True})
  a, b = wrapped(examples, rngs(5)), wrapped(examples, rngs(5))
  np.testing.assert_array_equal(a['image'], b['image'])  # Seeded: reproducible on resume.
  # Each example draws from its own generator only: the same example in another batch (here
  # the first three alone) is augmented the same way.
  alone = augment.random_resized_crop({k: v[:3] for k, v in examples.items()}, rngs(2), 0.3)
  np.testing.assert_array_equal(alone['image'], cropped['image'][:3])
  assert augment.with_augmentation(len, {}) is len  # All off: no wrapper.


def test_random_resized_crop_cuts_image_and_mask_with_the_same_box():
  """An index image: the mask holds each pixel's position (y * 16 + x), the image's red and green
  channels the same position as 16 * x + 8 and 16 * y + 8. After the crop, the position read from
  the (bilinear) image must be the one read from the (nearest) mask, to within the one pixel
  that the two interpolations may differ by: a box drawn apart for the mask is off by more."""
  y, x = np.mgrid[:16, :16]
  mask = (y * 16 + x).astype(np.uint8)
  image = np.stack([16 * x + 8, 16 * y + 8, np.zeros_like(x)], -1).astype(np.uint8)
  examples = {'image': np.repeat(image[None], 8, 0), 'segmentation': np.repeat(mask[None], 8, 0)}
  cropped = augment.random_resized_crop(examples, data.ExampleRngs(0, 1, 0, range(8)), 0.3)
  assert not np.array_equal(cropped['segmentation'], examples['segmentation'])  # It cropped.
  for key, positions in (('x', lambda m: m % 16), ('y', lambda m: m // 16)):
    from_mask = positions(cropped['segmentation'].astype(np.int32))
    channel = 0 if key == 'x' else 1
    from_image = (cropped['image'][..., channel].astype(np.float64) - 8) / 16
    assert np.abs(from_image - from_mask).max() <= 1.0, key


def test_folder_config_trains_on_images_written_here(tmp_path):
  """configs/folder.py end to end on a folder of real files the test writes (two classes)."""
  rng = np.random.default_rng(0)
  for sub in ('images', 'masks'):
    (tmp_path / sub).mkdir()
  for i in range(12):
    mask = np.zeros((24, 24), np.uint8)
    top, left = rng.integers(0, 12, 2)
    mask[top:top + 10, left:left + 10] = 1
    image = np.where(mask[..., None] == 1, 200, 30).astype(np.uint8).repeat(3, -1)
    Image.fromarray(image).save(tmp_path / 'images' / f'im{i}.png')
    Image.fromarray(mask).save(tmp_path / 'masks' / f'im{i}.png')
  config = small_config(str(tmp_path / 'tfds'), 'folder', **{
      'data.images_dir': str(tmp_path / 'images'), 'data.masks_dir': str(tmp_path / 'masks'),
      'data.image_size': (16, 16), 'data.test_fraction': 0.25, 'model.features': (8, 16),
      'batch_size': 8, 'eval_batch_size': 4, 'num_pictures': 2, 'num_train_steps': 2,
      'eval_every_steps': 2})
  results = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert list(results['test']['per_class']) == ['class_0', 'class_1']
  # The 24x24 test images are larger than the 16x16 input: scored whole, at native size.
  assert results['test_resolution'] == 'native'
  assert sum(r['pixels'] for r in results['test']['per_class'].values()) == 3 * 24 * 24


def test_run_scores_test_images_larger_than_its_input_at_native_resolution(tmp_path):
  """A 48x48 test image whose centre 16x16 window holds only background, and a 16x16 model: the
  run's test scores count every pixel of the image (what evaluate --mode=auto reports), not the
  centre window's, which would show no foreground at all."""
  rng = np.random.default_rng(0)
  def write(split, stem, mask):
    image = np.where(mask[..., None] == 1, 200, 30).astype(np.uint8).repeat(3, -1)
    image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    for sub, array in (('images', image), ('masks', mask)):
      os.makedirs(tmp_path / sub / split, exist_ok=True)
      Image.fromarray(array).save(tmp_path / sub / split / f'{stem}.png')
  for i in range(8):
    mask = np.zeros((16, 16), np.uint8)
    top, left = rng.integers(0, 8, 2)
    mask[top:top + 8, left:left + 8] = 1
    write('train', f'im{i}', mask)
  test_mask = np.zeros((48, 48), np.uint8)
  test_mask[2:12, 3:13] = test_mask[36:46, 30:44] = 1  # Corners; rows/cols 16..31 background.
  write('test', 'big', test_mask)
  config = small_config(str(tmp_path / 'tfds'), 'folder', **{
      'data.images_dir': str(tmp_path / 'images'), 'data.masks_dir': str(tmp_path / 'masks'),
      'data.split': 'folders', 'data.image_size': (16, 16), 'data.resize': 'center_crop',
      'model.features': (8, 16), 'batch_size': 8, 'eval_batch_size': 4, 'num_pictures': 1,
      'num_train_steps': 2, 'eval_every_steps': 2})
  workdir = str(tmp_path / 'run')
  results = training.train_and_evaluate(config, workdir)
  assert results['test_resolution'] == 'native'
  pixels = {name: row['pixels'] for name, row in results['test']['per_class'].items()}
  assert pixels == {'class_0': 48 * 48 - 100 - 140, 'class_1': 100 + 140}
  tool = evaluate.evaluate_run(workdir, checkpoint='latest')
  assert tool['mode'] == 'tile'
  for key in ('miou', 'mean_dice', 'pixel_accuracy'):
    assert results['test'][key] == pytest.approx(tool['metrics'][key], abs=1e-12)


OLD_RUN = os.path.join(ROOT, 'tests', 'data', 'unet_workdir_v1')


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_a_workdir_written_by_earlier_code_restores_and_refuses_to_resume(tmp_path, tfds_dir):
  """tests/data/unet_workdir_v1 was written by the code of 2026-12-01 (make_unet_workdir_v1.py
  beside it): its checkpoints, meta and config.json must keep restoring, giving the logits it
  gave then. Its data state is the iterator's before grain (random draws per batch), so resuming
  its training is refused with one line, leaving the workdir as it was; as a finished run it
  still re-evaluates."""
  workdir = str(tmp_path / 'old')
  shutil.copytree(OLD_RUN, workdir)
  expected = np.load(OLD_RUN + '_expected.npz')
  run = common.load_run(workdir, 'latest')
  assert (run.step, run.checkpoint, run.image_shape) == (2, 'latest', (32, 32, 1))
  assert run.variables['batch_stats']
  logits = run.model.apply(run.variables, expected['image'])['seg_logits']
  np.testing.assert_allclose(logits, expected['seg_logits'], rtol=1e-5, atol=1e-5)
  assert common.load_run(workdir).checkpoint == 'best'
  config = common.load_config(workdir)
  config.data.tfds_dir, config.num_train_steps = tfds_dir, 4
  before = sorted(str(p.relative_to(workdir)) for p in pathlib.Path(workdir).rglob('*'))
  with pytest.raises(UserInputError, match=r'^the checkpoint\'s data state .* before grain .* '
                                           r'cannot resume exactly; evaluate/predict still read it'):
    training.train_and_evaluate(config, workdir)
  assert sorted(str(p.relative_to(workdir)) for p in pathlib.Path(workdir).rglob('*')) == before
  # Finished (2 of 2 steps), it has no batch to draw: re-running only evaluates it again.
  config.num_train_steps = 2
  results = training.train_and_evaluate(config, workdir)
  assert (results['resumed_from_step'], results['step']) == (2, 2)
