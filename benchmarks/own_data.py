"""Quality figures of the own-data path, as a user would run it: image files written to folders,
then `python train.py` on them (JSON lines; `python -m benchmarks.own_data --workdir=DIR`).

Figures:
  vae/idx, vae/image_folder   configs/default.py's VAE (4,000 steps, dynamic binarisation) on the
                              real Fashion-MNIST, once from Debian's IDX files and once from the
                              same 60,000 + 10,000 images written as PNGs into train/ and test/
                              and read through image_folder: test -ELBO (nats), KL,
                              reconstruction; vae/difference their gap.
  semisup/<variant>/seed<k>   fashion_mnist_scenes written as folders: 500 labelled training
                              scenes (images/train, masks/train), the next 9,500 training scenes
                              without masks (unlabeled/), the 2,000 test scenes (images/test,
                              masks/test). Variants, each --steps steps with 16 labelled scenes
                              per step: segae_semisup (configs/segae_folder_semisup.py, + 16
                              unlabelled per step), segae_500 (the same SegAE, the 500 alone),
                              unet_500 (configs/folder.py, the 500 alone). Test mIoU, pixel
                              accuracy, mean Dice; semisup/<variant> the mean and sd over seeds.
  tiling/<variant>/<mode>     large images made of 3 x 3 test scenes side by side (192 x 192, 100
                              images, masks likewise), segmented by the seed-0 run of a variant:
                              resized to the 64 x 64 input, or tiled (64 x 64 tiles; overlap 0
                              with constant weights, and the default 0.25 with Gaussian
                              blending): mIoU of each. tiling_offset20/...: the same images
                              without their first 20 rows and columns (172 x 172), so that tile
                              borders no longer fall on scene borders.

The runs train one after another (several XLA processes on few cores are slower than their sum).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

from benchmarks.common import ROOT, dated_ledger

NUM_LABELED, NUM_UNLABELED = 500, 9_500
LABELED_PER_STEP = 16


def emit(lines: List[Dict], output: str, figure: Dict) -> None:
  figure = {'date': time.strftime('%Y-%m-%d'), **figure}
  print(json.dumps(figure), flush=True)
  lines.append(figure)
  with open(output, 'a') as f:
    f.write(json.dumps(figure) + '\n')


def train(config: str, workdir: str, *overrides: str, root: str = ROOT) -> Dict:
  """python <root>/train.py --config=configs/<config>.py --workdir=workdir overrides...; the run's
  results.json (read back when it exists: a finished run is not repeated, an interrupted one
  resumes from its checkpoint). `root`: the checkout to run (default this one)."""
  if not os.path.isfile(os.path.join(workdir, 'results.json')):
    cmd = [sys.executable, os.path.join(root, 'train.py'), f'--config=configs/{config}.py',
           f'--workdir={workdir}', *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
    print(f'# {config} -> {workdir}: {time.perf_counter() - start:.0f} s', flush=True)
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _save(path: str, array: np.ndarray) -> None:
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def write_fashion_mnist_pngs(root: str) -> str:
  """The real Fashion-MNIST train and test images as PNGs in root/train and root/test."""
  from segae_jax.data import fashion_mnist
  if os.path.isfile(os.path.join(root, 'done')):
    return root
  builder = fashion_mnist.prepare('', os.path.join(root, 'tfds'))
  for split, source in fashion_mnist.decoded_splits(builder).items():
    images = source.__getitems__(np.arange(len(source)))['image'][..., 0]
    for i, image in enumerate(images):
      _save(os.path.join(root, split, f'{i // 1000:02d}', f'{i:05d}.png'), image)
  open(os.path.join(root, 'done'), 'w').close()
  return root


def vae_figures(lines, output: str, workdir: str) -> None:
  pngs = write_fashion_mnist_pngs(os.path.join(workdir, 'fmnist_png'))
  runs = {
      'idx': train('default', os.path.join(workdir, 'vae_idx')),
      'image_folder': train(
          'vae_folder', os.path.join(workdir, 'vae_image_folder'),
          f'--config.data.images_dir={pngs}', '--config.data.split=folders',
          '--config.data.channels=1', '--config.data.image_size=(28, 28)',
          '--config.data.binarize=True', '--config.data.augment.flip=False',
          '--config.data.augment.crop_min_scale=1.0', '--config.model.features=(32, 64)',
          '--config.model.latent_dim=32', '--config.batch_size=128',
          '--config.num_train_steps=4000', '--config.eval_every_steps=1000',
          '--config.eval_batch_size=1000', '--config.num_pictures=32',
          f'--config.data.tfds_dir={os.path.join(workdir, "tfds")}'),
  }
  for name, results in runs.items():
    test = results['test']
    emit(lines, output, {'figure': f'vae/{name}', 'neg_elbo_nats': test['loss'],
                         'kl_nats': test['kl'], 'rec_nats': test['rec_bce'],
                         'steps': results['step'],
                         'train_images_per_s': results['train_images_per_s']})
  emit(lines, output, {'figure': 'vae/difference', 'neg_elbo_nats': (
      runs['image_folder']['test']['loss'] - runs['idx']['test']['loss'])})


def write_scenes_folders(root: str) -> Dict[str, str]:
  """The scenes as folders (see the module doc); returns the data overrides' paths."""
  from segae_jax import data
  paths = {k: os.path.join(root, k) for k in ('images', 'masks', 'unlabeled')}
  paths['class_names_file'] = os.path.join(root, 'classes.txt')
  if os.path.isfile(os.path.join(root, 'done')):
    return paths
  scenes = data.build({'name': 'fashion_mnist_scenes', 'tfds_dir': os.path.join(root, 'tfds'),
                       'cache': 'memory'})
  train = scenes.train.__getitems__(np.arange(NUM_LABELED + NUM_UNLABELED))
  test = scenes.test.__getitems__(np.arange(len(scenes.test)))
  for i in range(NUM_LABELED):
    _save(os.path.join(paths['images'], 'train', f'{i:05d}.png'), train['image'][i, ..., 0])
    _save(os.path.join(paths['masks'], 'train', f'{i:05d}.png'), train['segmentation'][i])
  for i in range(NUM_LABELED, NUM_LABELED + NUM_UNLABELED):
    _save(os.path.join(paths['unlabeled'], f'{i // 1000:02d}', f'u{i:05d}.png'),
          train['image'][i, ..., 0])
  for i in range(len(test['image'])):
    _save(os.path.join(paths['images'], 'test', f't{i:05d}.png'), test['image'][i, ..., 0])
    _save(os.path.join(paths['masks'], 'test', f't{i:05d}.png'), test['segmentation'][i])
  with open(paths['class_names_file'], 'w') as f:
    f.write('\n'.join(scenes.class_names) + '\n')
  open(os.path.join(root, 'done'), 'w').close()
  return paths


def _semisup_args(paths: Dict[str, str], workdir: str, seed: int, steps: int,
                  unlabeled: bool) -> List[str]:
  args = [f'--config.data.images_dir={paths["images"]}', f'--config.data.masks_dir={paths["masks"]}',
          f'--config.data.class_names_file={paths["class_names_file"]}',
          '--config.data.num_classes=11', '--config.data.channels=1',
          '--config.data.image_size=(64, 64)', '--config.data.split=folders',
          # The scenes configs' augmentation: flips only.
          '--config.data.augment.crop_min_scale=1.0', '--config.data.augment.brightness=0.0',
          '--config.data.augment.contrast=0.0', f'--config.seed={seed}',
          f'--config.num_train_steps={steps}', f'--config.eval_every_steps={steps}',
          f'--config.checkpoint_every_steps={steps}', '--config.eval_batch_size=200',
          f'--config.data.tfds_dir={os.path.join(workdir, "tfds")}']
  if unlabeled:
    return args + [f'--config.data.unlabeled_dir={paths["unlabeled"]}',
                   f'--config.data.unlabeled_per_batch={LABELED_PER_STEP}',
                   f'--config.batch_size={2 * LABELED_PER_STEP}']
  return args + ['--config.data.unlabeled_dir=', '--config.data.unlabeled_per_batch=0',
                 f'--config.batch_size={LABELED_PER_STEP}']


VARIANTS = {'segae_semisup': ('segae_folder_semisup', True),
            'segae_500': ('segae_folder_semisup', False),
            'unet_500': ('folder', False)}


def semisup_figures(lines, output: str, workdir: str, seeds: List[int], steps: int) -> None:
  paths = write_scenes_folders(os.path.join(workdir, 'scenes_folders'))
  scores: Dict[str, List[Dict]] = {v: [] for v in VARIANTS}
  for seed in seeds:  # Seed by seed: an interrupted measurement still compares the variants.
    for variant, (config, unlabeled) in VARIANTS.items():
      run_dir = os.path.join(workdir, 'semisup', f'{variant}_seed{seed}')
      results = train(config, run_dir, *_semisup_args(paths, workdir, seed, steps, unlabeled))
      test = results['test']
      figure = {'figure': f'semisup/{variant}/seed{seed}', 'miou': test['miou'],
                'pixel_accuracy': test['pixel_accuracy'], 'mean_dice': test['mean_dice'],
                'steps': results['step'], 'train_time_s': results['train_time_s']}
      emit(lines, output, figure)
      scores[variant].append(figure)
  for variant, rows in scores.items():
    mious = np.array([r['miou'] for r in rows])
    emit(lines, output, {'figure': f'semisup/{variant}', 'miou_mean': float(mious.mean()),
                         'miou_sd': float(mious.std(ddof=1)) if len(mious) > 1 else None,
                         'seeds': len(mious), 'steps': steps})


def large_scenes(tfds_dir: str, count: int = 100, grid: int = 3):
  """`count` images of grid x grid test scenes side by side, their masks (uint8), class names."""
  from segae_jax import data
  scenes = data.build({'name': 'fashion_mnist_scenes', 'cache': 'memory', 'tfds_dir': tfds_dir})
  test = scenes.test.__getitems__(np.arange(count * grid * grid))

  def join(x):
    x = x.reshape((count, grid, grid) + x.shape[1:])
    return np.stack([np.concatenate([np.concatenate(list(row), axis=1) for row in image], axis=0)
                     for image in x])
  return join(test['image']), join(test['segmentation']), scenes.class_names


def tiling_figures(lines, output: str, workdir: str, offset: int = 0) -> None:
  from segae_jax.inference import scoring
  from segae_jax.tools import common
  images, masks, class_names = large_scenes(os.path.join(workdir, 'scenes_folders', 'tfds'))
  # offset > 0 cuts the first rows and columns so that tile borders no longer fall on the
  # borders of the scenes the images are made of (as in a photograph).
  images, masks = images[:, offset:, offset:], masks[:, offset:, offset:]
  name = 'tiling' if not offset else f'tiling_offset{offset}'
  modes = {'resize': common.Inference(mode='resize'),
           'tile_overlap0_constant': common.Inference(mode='tile', overlap=0.0, blend='constant'),
           'tile_overlap0.25_gaussian': common.Inference(mode='tile')}
  for variant in VARIANTS:
    run_dir = os.path.join(workdir, 'semisup', f'{variant}_seed0')
    if not os.path.isdir(run_dir):
      continue
    run = common.load_run(run_dir, 'latest')
    for mode, inference in modes.items():
      labels = common.segment_images(run, list(images), inference, 32)
      confusion = sum(scoring.confusion_counts(truth, predicted, len(class_names))
                      for truth, predicted in zip(masks, labels))
      scores = scoring.segmentation_scores(confusion, class_names)
      emit(lines, output, {'figure': f'{name}/{variant}/{mode}', 'miou': scores['miou'],
                           'pixel_accuracy': scores['pixel_accuracy'],
                           'image_size': list(images.shape[1:3]), 'images': len(images)})


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='Folders, datasets and runs go here.')
  parser.add_argument('--only', default='vae,semisup,tiling,tiling_offset')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--output', default=dated_ledger('own_data'))
  args = parser.parse_args(argv)
  only = args.only.split(',')
  lines: List[Dict] = []
  os.makedirs(args.workdir, exist_ok=True)
  if 'vae' in only:
    vae_figures(lines, args.output, args.workdir)
  if 'semisup' in only:
    semisup_figures(lines, args.output, args.workdir, [int(s) for s in args.seeds.split(',')],
                    args.steps)
  if 'tiling' in only:
    tiling_figures(lines, args.output, args.workdir)
  if 'tiling_offset' in only:
    tiling_figures(lines, args.output, args.workdir, offset=20)


if __name__ == '__main__':
  main()
