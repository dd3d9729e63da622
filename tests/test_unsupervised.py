"""Unsupervised segmentation: Hungarian-matched scores on hand-built counts, clustering, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import ml_collections
import pytest
from PIL import Image

from conftest import ROOT, scenes_config
from segae_jax import training
from segae_jax.inference import scoring
from segae_jax.tools import clusters, unsupervised
from segae_jax.errors import UserInputError


def test_hungarian_matching_on_a_hand_built_confusion():
  # Rows: true classes 0..2; columns: clusters 0..3 (one more cluster than classes).
  confusion = np.array([[2, 50, 0, 8],
                        [30, 0, 5, 0],
                        [0, 10, 20, 0]])
  scores = clusters.hungarian_scores(confusion)
  # Best one-to-one matching: cluster 1 -> class 0, 0 -> 1, 2 -> 2 (50 + 30 + 20 = 100 pixels);
  # cluster 3 stays unmatched.
  assert scores['assignment'] == [1, 0, 2, -1]
  # IoU_c = TP / (truth + predicted - TP): class 0: 50 / (60 + 60 - 50); class 1: 30 / (35 + 32
  # - 30); class 2: 20 / (30 + 25 - 20).
  expected = [50 / 70, 30 / 37, 20 / 35]
  np.testing.assert_allclose(scores['per_class_iou'], expected)
  assert scores['miou'] == pytest.approx(np.mean(expected))
  assert scores['pixel_accuracy'] == pytest.approx(100 / 125)


def test_fewer_clusters_than_classes_leaves_a_class_at_zero():
  scores = clusters.hungarian_scores(np.array([[10, 0], [0, 10], [3, 0]]))
  assert scores['assignment'] == [0, 1]
  np.testing.assert_allclose(scores['per_class_iou'], [10 / 13, 1.0, 0.0])
  # A class absent from the ground truth is not averaged.
  assert clusters.hungarian_scores(np.array([[10, 0], [0, 0]]))['miou'] == 1.0


def test_foreground_iou_by_majority_vote():
  # Clusters: 0 mostly background, 1 and 2 mostly foreground (classes 1 and 2 together).
  confusion = np.array([[40, 3, 1],
                        [4, 20, 0],
                        [2, 0, 30]])
  # Foreground TP = 20 + 30, FP = 3 + 1, FN = 4 + 2.
  assert clusters.foreground_iou(confusion) == pytest.approx(50 / 60)


def test_confusion_counts_count_and_ignore_out_of_range_labels():
  labels = np.array([[0, 0, 1], [2, 255, 1]])
  clusters = np.array([[1, 1, 0], [0, 1, 2]])
  confusion = scoring.confusion_counts(labels, clusters, 3, 3)
  np.testing.assert_array_equal(confusion, [[0, 2, 0], [1, 0, 1], [1, 0, 0]])


def test_kmeans_on_the_raw_pixel_baseline_separates_two_intensities():
  # Two flat halves: the colour block alone splits them exactly, whatever the seed.
  images = np.zeros((4, 8, 8, 1), np.float32)
  images[:, :, 4:] = 1.0
  extractor = unsupervised.FeatureExtractor(None, (), 0.0, colour_weight=1.0, position_weight=0.0)
  config = ml_collections.ConfigDict({'fit_pixels_per_image': 16, 'num_clusters': 2,
                                      'kmeans_iterations': 10, 'seed': 0})
  clustering = unsupervised.Clustering(extractor, config)
  clustering.fit([images], np.random.default_rng(0))
  regions = clustering.regions(images)
  assert regions.shape == (4, 8, 8)
  assert len(np.unique(regions[..., :4])) == 1 and len(np.unique(regions[..., 4:])) == 1
  assert regions[0, 0, 0] != regions[0, 0, 7]
  confusion = scoring.confusion_counts((images[..., 0] > 0).astype(int), regions, 2, 2)
  assert clusters.hungarian_scores(confusion)['miou'] == 1.0


def test_position_block_is_the_pixel_grid():
  grid = unsupervised.pixel_grid(2, 4)
  np.testing.assert_allclose(grid[..., 0], [[0.25] * 4, [0.75] * 4])
  np.testing.assert_allclose(grid[1, :, 1], [0.125, 0.375, 0.625, 0.875])


@pytest.fixture(scope='module')
def ae_workdir(tmp_path_factory, tfds_dir):
  workdir = str(tmp_path_factory.mktemp('unsup') / 'ae')
  training.train_and_evaluate(scenes_config(tfds_dir, 'ae_scenes'), workdir)
  return workdir


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'segae_jax.tools.unsupervised', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


SMALL = ['--config=configs/unsup_scenes.py', '--config.fit_images=32', '--config.num_pictures=4',
         '--config.fit_pixels_per_image=64', '--config.kmeans_iterations=5',
         '--config.levels=(0, 1)']


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_unsupervised_cli_scores_regions_against_real_masks(ae_workdir, tmp_path):
  out = str(tmp_path / 'out')
  proc = _run(f'--workdir={ae_workdir}', f'--output={out}', *SMALL)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'matched mIoU' in proc.stdout
  result = json.load(open(os.path.join(out, 'unsupervised.json')))
  assert result['model'] == 'unet_ae' and result['num_images'] == 32
  assert result['methods'][:2] == ['autoencoder', 'baseline_pixels']
  assert sorted(result['methods'][2:]) == ['felzenszwalb', 'slic']  # config.partitions.
  for name in result['methods']:
    r = result[name]
    assert 0.0 <= r['miou'] <= 1.0 and 0.0 <= r['pixel_accuracy'] <= 1.0
    assert sorted(a for a in r['assignment'] if a >= 0) == list(range(11))
  # Background is exactly 0 in these scenes: intensity alone finds most of the foreground.
  assert result['baseline_pixels']['foreground_iou'] > 0.5
  grid = np.asarray(Image.open(os.path.join(out, 'regions.png')))
  # 4 images x (image | truth | each of the 4 methods' regions).
  assert grid.shape == (4 * 34 + 2, 6 * 34 + 2, 3)
  regions = np.asarray(Image.open(os.path.join(out, 'test_00000_regions.png')))
  assert regions.shape == (32, 32) and regions.max() < 11
  # Rerunning gives the same regions: everything is seeded.
  again = str(tmp_path / 'again')
  assert _run(f'--workdir={ae_workdir}', f'--output={again}', *SMALL).returncode == 0
  assert json.load(open(os.path.join(again, 'unsupervised.json')))['autoencoder'] == (
      result['autoencoder'])


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_unsupervised_cli_on_a_folder_without_masks(ae_workdir, tmp_path):
  folder = tmp_path / 'mine'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i, size in enumerate([(40, 30), (32, 32), (64, 48)]):
    Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(folder / f'im{i}.png')
  out = str(tmp_path / 'out')
  proc = _run(f'--workdir={ae_workdir}', f'--input={folder}', f'--output={out}', *SMALL,
              '--config.num_clusters=3')
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.load(open(os.path.join(out, 'unsupervised.json')))
  assert result['num_images'] == 3 and 'autoencoder' not in result
  # The model takes 32x32: the two larger images get their features tile by tile (auto mode).
  assert result['num_tiled'] == 2
  for i, size in enumerate([(40, 30), (32, 32), (64, 48)]):
    regions = Image.open(os.path.join(out, f'im{i}_regions.png'))
    assert regions.size == size and np.asarray(regions).max() < 3
    assert Image.open(os.path.join(out, f'im{i}_overlay.png')).size == size


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_unsupervised_refuses_bad_input(ae_workdir, tmp_path):
  proc = _run(f'--workdir={ae_workdir}', *SMALL, '--config.num_clusters=1')
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      'error: config.num_clusters must be >= 2, got 1']
  # The same command's other refusals, in-process (the command prints them the same way).
  from configs import unsup_scenes
  config = unsup_scenes.get_config()
  config.update_from_flattened_dict({'fit_images': 32, 'levels': (0, 7)})
  with pytest.raises(UserInputError, match='the model has levels 0..1'):
    unsupervised.run_unsupervised(ae_workdir, config, output=str(tmp_path / 'out'))
  with pytest.raises(UserInputError, match='not a training workdir'):
    unsupervised.run_unsupervised(str(tmp_path), config)


@pytest.fixture(scope='module')
def vae_workdir(tmp_path_factory, tfds_dir):
  """A VAE of Fashion-MNIST images (configs/default.py, no label read): the objects' codes."""
  from conftest import small_config
  workdir = str(tmp_path_factory.mktemp('unsup') / 'vae')
  training.train_and_evaluate(small_config(tfds_dir), workdir)
  return workdir


def _objects_config(vae_workdir, head_workdir, **fields):
  from configs import unsup_objects
  config = unsup_objects.get_config()
  config.update_from_flattened_dict({
      'fit_images': 32, 'num_pictures': 4, 'fit_pixels_per_image': 64, 'kmeans_iterations': 5,
      'levels': (0, 1), 'objects.workdir': vae_workdir, 'head.workdir': head_workdir,
      'head.steps': 2, 'head.composites': 16, 'head.test_composites': 4, 'head.batch_size': 16,
      **fields})
  # The head's rounds start from the small test AE: its model's levels, small batches.
  config.head.overrides = (('batch_size', 8), ('eval_batch_size', 8), ('loss.dice', 0.0),
                           ('model.features', (8, 16)), ('warmup_steps', 1),
                           ('num_pictures', 2))
  return config


@pytest.fixture(scope='module')
def objects_split(ae_workdir, vae_workdir, tmp_path_factory):
  """The object methods on the test scenes, the head trained in its own workdir:
  (head workdir, unsupervised.json's results)."""
  root = tmp_path_factory.mktemp('objects')
  head = str(root / 'head')
  config = _objects_config(vae_workdir, head)
  return head, unsupervised.run_unsupervised(ae_workdir, config, output=str(root / 'out'))


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_object_methods_train_the_head_once_and_resume_it(ae_workdir, vae_workdir, objects_split,
                                                          tmp_path):
  head, result = objects_split
  assert result['methods'][-2:] == ['object_codes', 'pixel_head']
  assert result['written'] == 'pixel_head'
  for name in ('object_codes', 'pixel_head'):
    # The scenes' background is exactly 0: the components are the objects' pixels.
    assert result[name]['foreground_iou'] > 0.9
    assert result[name]['num_fit_images'] == 64  # objects.fit_images=0: the whole split.
  for round_ in ('round1', 'round2'):
    assert json.load(open(os.path.join(head, round_, 'results.json')))['step'] == 2
  masks = np.stack([np.asarray(Image.open(os.path.join(head, 'round2_data', 'masks', 'train', f)))
                    for f in sorted(os.listdir(os.path.join(head, 'round2_data', 'masks',
                                                            'train')))])
  assert set(np.unique(masks)) <= set(range(11)) | {255} and (masks == 0).any()
  finished = os.path.getmtime(os.path.join(head, 'round2', 'results.json'))
  again = unsupervised.run_unsupervised(ae_workdir, _objects_config(vae_workdir, head),
                                        output=str(tmp_path / 'again'))
  # The finished rounds are read back, not trained again: the same head, the same regions.
  assert os.path.getmtime(os.path.join(head, 'round2', 'results.json')) == finished
  assert again['pixel_head'] == result['pixel_head']
  with pytest.raises(UserInputError, match='another definition'):
    unsupervised.run_unsupervised(ae_workdir, _objects_config(vae_workdir, head,
                                                              **{'objects.seed': 1}),
                                  output=str(tmp_path / 'other'))
  for field, value, message in (('head.rounds', 3, 'must be 1 or 2, got 3'),
                                ('objects.single_quantile', 0.0, r'must be in \(0, 1\]'),
                                ('write_regions', 'kmeans', "'kmeans' is not one of")):
    with pytest.raises(UserInputError, match=f'config.{field}.*{message}'):
      unsupervised.run_unsupervised(ae_workdir, _objects_config(vae_workdir, head,
                                                                **{field: value}),
                                    output=str(tmp_path / 'bad'))
  with pytest.raises(UserInputError, match='config.objects.workdir is not set'):
    unsupervised.run_unsupervised(ae_workdir, _objects_config('', str(tmp_path / 'head2')),
                                  output=str(tmp_path / 'none'))


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_every_method_on_a_folder_of_two_sizes_scored_against_its_masks(
    ae_workdir, vae_workdir, objects_split, tfds_dir, tmp_path):
  """--input with --masks: test scenes as PNG files, 28 at the model's 32x32 and a 64x64 mosaic
  of four (tiled), each method's regions at the image's own size, scored per class (the object
  classes fitted on the folder's own objects, as the k-means is)."""
  from segae_jax import data
  from conftest import scenes_config
  head, _ = objects_split
  scenes = data.build(scenes_config(tfds_dir).data).test.__getitems__(list(range(32)))
  images = scenes['image'][..., 0]
  labels = scenes['segmentation'].reshape(images.shape)
  mosaic = lambda a: np.block([[a[28], a[29]], [a[30], a[31]]])
  (tmp_path / 'images').mkdir()
  (tmp_path / 'masks').mkdir()
  files = [(f'small{i:02d}', images[i], labels[i]) for i in range(28)]
  for stem, image, mask in files + [('large', mosaic(images), mosaic(labels))]:
    Image.fromarray(image).save(tmp_path / 'images' / f'{stem}.png')
    Image.fromarray(mask).save(tmp_path / 'masks' / f'{stem}.png')
  out = str(tmp_path / 'out')
  proc = _run(f'--workdir={ae_workdir}', f'--input={tmp_path / "images"}',
              f'--masks={tmp_path / "masks"}', f'--output={out}',
              '--config=configs/unsup_objects.py',
              f'--config.objects.workdir={vae_workdir}', f'--config.head.workdir={head}',
              '--config.head.steps=2', '--config.head.composites=16',
              '--config.head.test_composites=4', '--config.head.batch_size=16',
              '--config.fit_pixels_per_image=64', '--config.kmeans_iterations=5',
              '--config.levels=(0, 1)', '--config.objects.num_clusters=2',
              '--config.num_clusters=11')
  assert proc.returncode == 2 and 'another definition' in proc.stderr  # objects.num_clusters.
  config = _objects_config(vae_workdir, head)
  result = unsupervised.run_unsupervised(ae_workdir, config, input_path=str(tmp_path / 'images'),
                                         output=out, masks_path=str(tmp_path / 'masks'))
  assert result['num_tiled'] == 1 and result['methods'] == list(config.methods)
  for stem, size in (('small00', (32, 32)), ('small27', (32, 32)), ('large', (64, 64))):
    regions = np.asarray(Image.open(os.path.join(out, f'{stem}_regions.png')))
    assert regions.shape == size and regions.max() <= 10
    # The pixel head's regions: classes on the objects, background (0) off them (filled holes
    # and dropped specks aside: the scenes' background is exactly 0).
    truth = np.asarray(Image.open(tmp_path / 'masks' / f'{stem}.png'))
    assert ((regions == 0) != (truth == 0)).mean() < 0.02
  for name in config.methods:
    assert 0.0 <= result['scores'][name]['miou'] <= 1.0
  assert result['scores']['object_codes']['foreground_iou'] > 0.95
  table = open(os.path.join(out, 'per_class.md')).read()
  header = [cell.strip() for cell in table.splitlines()[0].split('|')[1:-1]]
  assert header == ['class'] + list(config.methods) and (
      'class_10' in table)
