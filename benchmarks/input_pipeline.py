"""Input-pipeline figures on generated folders of 256x256 RGB images (`python -m
benchmarks.run --only=streaming`; JSON lines like the rest of the suite).

Figures:
  pipeline_workers/<n>     data.TrainIterator over a folder of 256x256 RGB JPEGs read by
                           data.images.ImageFileSource: decode (Pillow) + random resized crop
                           (min scale 0.35, back to 256x256) + flip + scaling to float32, with
                           n = 0, 1, 2 grain worker processes: examples_per_s and its ratio to
                           n = 0 (the per-worker scaling).
  pipeline_workers_stored/<n> the same 400 images prepared as a segmentation_folder (stored as
                           PNG at their own size, decoded when read) and streamed: crop + flip.
  streaming_rss/<N>        peak resident memory (ru_maxrss, MiB) of a train.py process training
                           a small U-Net for 8 steps on a segmentation_folder of N = 2,000 and
                           20,000 such images (config.data.cache='auto': both stream), after the
                           dataset is prepared by another process; and their ratio.
  data_wait/unet_folder128 a real train.py run of a U-Net on 128x128 RGB images (a prepared
                           segmentation_folder of 1,000 images, streamed, crop + flip): its
                           results.json data_wait_fraction and train_images_per_s.
  unet256_step_flop        XLA's FLOP count of one 256x256 RGB U-Net train step (the
                           unet_scenes model, per image), for the accelerator estimate in
                           docs/performance.md.

The images are smooth random colour fields with pixel noise, about as hard to decode as photos of
that size; masks are two classes thresholded from the same field.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List

import numpy as np

from benchmarks.common import ROOT

SIZE = 256


def _image_and_mask(rng: np.random.Generator, size: int):
  from PIL import Image
  field = rng.random((8, 8, 3), np.float32) * 255
  smooth = np.asarray(Image.fromarray(field.astype(np.uint8)).resize((size, size),
                                                                      Image.BICUBIC), np.float32)
  image = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
  mask = (smooth[..., 0] > 127).astype(np.uint8)
  return Image.fromarray(image), Image.fromarray(mask)


def write_folder(root: str, count: int, size: int = SIZE, masks: bool = True) -> List[str]:
  """`count` JPEG images (quality 90) in root/images and PNG masks in root/masks; returns the
  image paths. Reuses a folder already holding `count` images."""
  images_dir, masks_dir = os.path.join(root, 'images'), os.path.join(root, 'masks')
  paths = [os.path.join(images_dir, f'{i:06d}.jpg') for i in range(count)]
  if os.path.isdir(images_dir) and len(os.listdir(images_dir)) == count:
    return paths
  os.makedirs(images_dir, exist_ok=True)
  os.makedirs(masks_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, path in enumerate(paths):
    image, mask = _image_and_mask(rng, size)
    image.save(path, quality=90)
    if masks:
      mask.save(os.path.join(masks_dir, f'{i:06d}.png'))
  return paths


def _augmented_preprocess():
  import functools
  from segae_jax import data
  from segae_jax.data import augment
  return augment.with_augmentation(functools.partial(data.scale_images, binarize=False),
                                   {'flip': True, 'crop_min_scale': 0.35})


def _rates(name: str, source, preprocess, seconds: float) -> List[Dict]:
  """Examples/s of a TrainIterator over `source` with 0, 1 and 2 workers (batches of 32)."""
  from segae_jax import data
  figures, base = [], None
  for workers in (0, 1, 2):
    it = data.TrainIterator(source, 32, 0, preprocess, num_workers=workers)
    for _ in range(2 + workers):  # Workers started and their buffers filled once.
      next(it)
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      next(it)
      batches += 1
    per_s = batches * 32 / (time.perf_counter() - start)
    it.close()
    base = base or per_s
    figures.append({'figure': f'{name}/{workers}', 'image_size': [SIZE, SIZE, 3],
                    'batch_size': 32, 'examples_per_s': per_s, 'ratio_to_0_workers': per_s / base,
                    'host_cores': len(os.sched_getaffinity(0))})
  return figures


def pipeline_workers_figures(root: str, seconds: float = 8.0) -> List[Dict]:
  """JPEG files decoded on each read; then the same images prepared as a segmentation_folder
  (PNG at their own size in array_record, decoded by OpenCV when read) and streamed."""
  from segae_jax import data
  from segae_jax.data import augment
  from segae_jax.data.images import ImageFileSource
  folder = os.path.join(root, 'jpeg400')
  paths = write_folder(folder, 400)
  figures = _rates('pipeline_workers', ImageFileSource(paths, channels=3),
                   _augmented_preprocess(), seconds)
  tfds_dir = os.path.join(root, 'tfds400')
  _prepare(folder, tfds_dir, SIZE)
  config = {'name': 'segmentation_folder', 'images_dir': f'{folder}/images',
            'masks_dir': f'{folder}/masks', 'num_classes': 2, 'channels': 3,
            'image_size': (SIZE, SIZE), 'test_fraction': TEST_FRACTION, 'tfds_dir': tfds_dir,
            'cache': 'stream'}
  dataset = data.build(config)
  assert isinstance(dataset.train, data.StreamedSource)
  preprocess = augment.with_augmentation(dataset.preprocess,
                                         {'flip': True, 'crop_min_scale': 0.35},
                                         dataset.image_shape[:2], dataset.resize)
  return figures + _rates('pipeline_workers_stored', dataset.train, preprocess, seconds)


def _folder_overrides(root: str, tfds_dir: str, size: int) -> List[str]:
  return [f'--config.data.images_dir={root}/images', f'--config.data.masks_dir={root}/masks',
          '--config.data.num_classes=2', '--config.data.channels=3',
          f'--config.data.image_size=({size},{size})', f'--config.data.tfds_dir={tfds_dir}',
          '--config.data.cache=auto', f'--config.data.test_fraction={TEST_FRACTION}']


TEST_FRACTION = 0.01


def _prepare(root: str, tfds_dir: str, size: int) -> None:
  """Prepares the segmentation_folder of `root` (as _folder_overrides describes it) in its own
  process, so its memory is not the training process's."""
  code = ('from configs import folder; from segae_jax import data; '
          'c = folder.get_config().data; '
          f'c.images_dir, c.masks_dir = "{root}/images", "{root}/masks"; '
          f'c.image_size, c.tfds_dir, c.cache = ({size}, {size}), "{tfds_dir}", "stream"; '
          f'c.test_fraction = {TEST_FRACTION}; '
          'data.build(c)')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=3600)
  if proc.returncode:
    raise RuntimeError(f'preparing {root} failed: {proc.stderr[-2000:]}')


def _train(workdir: str, extra: List[str], steps: int) -> Dict:
  """train.py --config=configs/folder.py in a subprocess: its results.json and its own peak
  resident memory (MiB, from wait4: that process alone, not the preparing one)."""
  cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--config=configs/folder.py',
         f'--workdir={workdir}', f'--config.num_train_steps={steps}',
         f'--config.log_every_steps={max(1, steps // 4)}', f'--config.eval_every_steps={steps}',
         f'--config.checkpoint_every_steps={steps}', '--config.num_pictures=4', *extra]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'stderr.txt'), 'w+') as err:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
      err.seek(0)
      raise RuntimeError(f'{cmd} failed: {err.read()[-2000:]}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  return {'results': results, 'peak_rss_mib': usage.ru_maxrss / 1024}


def streaming_rss_figures(root: str) -> List[Dict]:
  figures = []
  small_model = ['--config.model.features=(8,16)', '--config.batch_size=8',
                 '--config.eval_batch_size=8']
  for count in (2_000, 20_000):
    folder = os.path.join(root, f'rgb{count}')
    write_folder(folder, count)
    tfds_dir = os.path.join(root, f'tfds{count}')
    _prepare(folder, tfds_dir, SIZE)
    run = _train(os.path.join(root, f'run{count}'), _folder_overrides(folder, tfds_dir, SIZE)
                 + small_model, steps=8)
    figures.append({'figure': f'streaming_rss/{count}', 'images': count,
                    'image_size': [SIZE, SIZE, 3], 'peak_rss_mib': run['peak_rss_mib']})
    shutil.rmtree(tfds_dir, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
  figures.append({'figure': 'streaming_rss/ratio_20000_to_2000',
                  'ratio': figures[1]['peak_rss_mib'] / figures[0]['peak_rss_mib']})
  return figures


def data_wait_folder_figure(root: str, steps: int = 60) -> Dict:
  folder = os.path.join(root, 'rgb128')
  write_folder(folder, 1000, size=128)
  tfds_dir = os.path.join(root, 'tfds128')
  extra = _folder_overrides(folder, tfds_dir, 128) + ['--config.data.cache=stream',
                                                      '--config.batch_size=16']
  run = _train(os.path.join(root, 'run128'), extra, steps)
  results = run['results']
  return {'figure': 'data_wait/unet_folder128', 'steps': steps, 'image_size': [128, 128, 3],
          'batch_size': 16, 'cache': 'stream', 'num_workers': 'config default',
          'data_wait_fraction': results['data_wait_fraction'],
          'train_images_per_s': results['train_images_per_s']}


def unet256_flop_figure() -> Dict:
  import jax
  from configs import folder
  from segae_jax import training
  config = folder.get_config()
  config.batch_size = 8
  model = training.build_model(config, (SIZE, SIZE, 3), 2, None)
  state = training.create_train_state(config, model, (SIZE, SIZE, 3), jax.random.PRNGKey(0))
  train_fn = training.step_functions(config)[0]
  batch = {'image': np.zeros((8, SIZE, SIZE, 3), np.float32),
           'segmentation': np.zeros((8, SIZE, SIZE), np.int32)}
  compiled = jax.jit(train_fn).lower(state, batch, jax.random.PRNGKey(1)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flop = float(cost['flops'])
  return {'figure': 'unet256_step_flop', 'model_features': list(config.model.features),
          'batch_size': 8, 'gflop_per_image': flop / 8 / 1e9}


def figures() -> Iterator[Dict]:
  """Every figure above, each as soon as it is measured, in a temporary folder removed
  afterwards."""
  root = tempfile.mkdtemp(prefix='segae_bench_input_')
  try:
    yield from pipeline_workers_figures(root)
    yield data_wait_folder_figure(root)
    yield unet256_flop_figure()
    yield from streaming_rss_figures(root)
  finally:
    shutil.rmtree(root, ignore_errors=True)


def main_job_images_per_s(checkout: str, workdir: str, steps: int = 1500) -> float:
  """The main job (configs/default.py) of the code in `checkout` for `steps` steps: the median
  over its log windows of train/images_per_s."""
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  cmd = [sys.executable, 'train.py', '--config=configs/default.py', f'--workdir={workdir}',
         f'--config.num_train_steps={steps}', f'--config.eval_every_steps={steps}',
         f'--config.checkpoint_every_steps={steps}']
  proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=1800)
  if proc.returncode:
    raise RuntimeError(f'{cmd} in {checkout} failed: {proc.stderr[-2000:]}')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return float(np.median([r['train/images_per_s'] for r in rows if 'train/images_per_s' in r]))


def main_job_figures(baseline: str, pairs: int = 3) -> List[Dict]:
  """The main job's train images/s, this checkout against `baseline` (another checkout, e.g.
  `git worktree add /tmp/before <rev>`), run one after the other, alternating, `pairs` times."""
  root = tempfile.mkdtemp(prefix='segae_bench_main_')
  rates = {'baseline': [], 'current': []}
  try:
    for i in range(pairs):
      for side, checkout in (('baseline', baseline), ('current', ROOT)):
        rates[side].append(main_job_images_per_s(checkout, os.path.join(root, f'{side}{i}')))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  mean = {side: float(np.mean(v)) for side, v in rates.items()}
  return [{'figure': 'main_job/images_per_s', 'baseline_checkout': baseline,
           'baseline': rates['baseline'], 'current': rates['current'],
           'ratio_of_means': mean['current'] / mean['baseline']}]
