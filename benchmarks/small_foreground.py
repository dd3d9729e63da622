"""Small foregrounds: cross-entropy against cross-entropy + Dice and class-weighted cross-entropy
for configs/folder.py on a folder whose foreground is a few percent of the pixels.

  python -m benchmarks.small_foreground --workdir=/tmp/small_fg [--seeds=0,1,2] [--steps=600]

The data, written here as PNG files: 240x320 RGB photos of a smooth random texture with thin
strokes (2 pixels wide) and small blobs drawn in a slightly different colour, 2-4% of the pixels
(class 1), 32 for training and 8 for testing (split='folders'). Every run trains configs/folder.py
on 64x64 windows cropped at native scale (resize='center_crop', the issue's photo recipe) with
one loss, and is scored on the whole test photos at native resolution (tiled: results.json's
test_resolution 'native'). Arms, paired by seed (same windows, same initialisation):

  ce           seg_ce (folder.py's loss before this measurement)
  ce_dice      seg_ce + dice (nnU-Net's default)
  ce_weighted  seg_ce with class weights from the training masks, median frequency balancing
               (Eigen & Fergus, ICCV 2015: w_c = median_k f_k / f_c, f_c the pixel frequency)

Each run is a train.py run in its own workdir (benchmarks.label_efficiency.train: a finished run
is read back, an unfinished one resumes); results go to --output as JSON lines and a Markdown
table: foreground IoU and mIoU (mean ± sd over seeds), the paired difference to ce with its 95%
t interval, and the wall time of a run.
"""
import argparse
import os
from typing import Dict, List

import numpy as np
from PIL import Image

from benchmarks import paired
from benchmarks.common import RESULTS

ARMS = ('ce', 'ce_dice', 'ce_weighted')
SIZE = (240, 320)


def _texture(rng: np.random.Generator) -> np.ndarray:
  """float32 [240, 320, 3] in [0, 1]: low-frequency colour noise."""
  coarse = rng.random((SIZE[0] // 16 + 2, SIZE[1] // 16 + 2, 3)).astype(np.float32)
  big = np.kron(coarse, np.ones((16, 16, 1), np.float32))[:SIZE[0], :SIZE[1]]
  return 0.25 + 0.5 * big + rng.normal(0, 0.03, big.shape).astype(np.float32)


def _foreground(rng: np.random.Generator) -> np.ndarray:
  """bool [240, 320]: 3-5 thin strokes and 4-8 small blobs."""
  mask = np.zeros(SIZE, bool)
  y, x = np.mgrid[:SIZE[0], :SIZE[1]]
  for _ in range(rng.integers(3, 6)):
    (y0, x0), (y1, x1) = rng.uniform((0, 0), SIZE, (2, 2))
    length = max(1.0, np.hypot(y1 - y0, x1 - x0))
    t = np.clip(((y - y0) * (y1 - y0) + (x - x0) * (x1 - x0)) / length ** 2, 0, 1)
    mask |= np.hypot(y - (y0 + t * (y1 - y0)), x - (x0 + t * (x1 - x0))) <= 1.0
  for _ in range(rng.integers(4, 9)):
    cy, cx = rng.uniform((0, 0), SIZE)
    mask |= np.hypot(y - cy, x - cx) <= rng.uniform(2, 4)
  return mask


def write_folder(root: str, num_train: int = 32, num_test: int = 8) -> Dict[str, float]:
  """The photos and masks under root/{images,masks}/{train,test}; returns the foreground's pixel
  fraction per split. Written once (paired.write_splits_once: a finished folder is reused)."""
  def write_example(rng, split, i):
    image, mask = _texture(rng), _foreground(rng)
    shift = rng.choice([-1, 1]) * rng.uniform(0.12, 0.2, 3).astype(np.float32)
    image = np.where(mask[..., None], image + shift, image)
    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(root, 'images', split, f'photo{i:02d}.png'))
    Image.fromarray(mask.astype(np.uint8)).save(os.path.join(root, 'masks', split,
                                                             f'photo{i:02d}.png'))
    return float(mask.mean())
  return paired.write_splits_once(root, {'train': num_train, 'test': num_test},
                                  ('images', 'masks'), write_example)


def class_weights(root: str) -> List[float]:
  """Median frequency balancing over the training masks (see the module doc)."""
  counts = np.zeros(2)
  for name in sorted(os.listdir(os.path.join(root, 'masks', 'train'))):
    counts += np.bincount(np.asarray(Image.open(os.path.join(root, 'masks', 'train', name)))
                          .reshape(-1), minlength=2)
  frequency = counts / counts.sum()
  return (np.median(frequency) / frequency).tolist()


def write_configs(workdir: str, weights: List[float]) -> Dict[str, str]:
  """{arm: path of a config file importing configs/folder.py with the arm's loss}."""
  losses = {'ce': "{'seg_ce': 1.0}", 'ce_dice': "{'seg_ce': 1.0, 'dice': 1.0}",
            'ce_weighted': "{'seg_ce': 1.0}"}
  params = {'ce_weighted': f"{{'seg_ce': {{'class_weights': {weights}}}}}"}
  os.makedirs(os.path.join(workdir, 'configs'), exist_ok=True)
  paths = {}
  for arm in ARMS:
    paths[arm] = os.path.join(workdir, 'configs', f'{arm}.py')
    with open(paths[arm], 'w') as f:
      f.write('"""benchmarks/small_foreground.py\'s arm {0}."""\nimport ml_collections\n\n'
              'from configs import folder\n\n\ndef get_config():\n'
              '  config = folder.get_config()\n'
              '  config.loss = ml_collections.ConfigDict({1})\n'
              '  config.loss_params = ml_collections.ConfigDict({2})\n'
              '  return config\n'.format(arm, losses[arm], params.get(arm, '{}')))
  return paths


def run_args(root: str, workdir: str, seed: int, steps: int) -> List[str]:
  return [f'--config.data.images_dir={root}/images', f'--config.data.masks_dir={root}/masks',
          '--config.data.split=folders', '--config.data.resize=center_crop',
          '--config.data.image_size=(64, 64)', f'--config.data.tfds_dir={workdir}/tfds',
          '--config.batch_size=16', '--config.eval_batch_size=16', '--config.num_pictures=4',
          f'--config.num_train_steps={steps}', f'--config.eval_every_steps={steps // 3}',
          f'--config.checkpoint_every_steps={steps // 3}', f'--config.seed={seed}']


def markdown(summary: List[Dict], fractions: Dict[str, float]) -> str:
  return (f'Foreground: {100 * fractions["train"]:.1f}% of the training pixels, '
          f'{100 * fractions["test"]:.1f}% of the test pixels.\n\n' +
          paired.markdown(summary, 'ce', 'foreground_iou', 'foreground IoU'))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--num_train', type=int, default=32)
  parser.add_argument('--output', default=os.path.join(RESULTS, 'small_foreground.jsonl'))
  args = parser.parse_args(argv)
  root = os.path.join(args.workdir, 'data')
  fractions = write_folder(root, args.num_train)
  configs = write_configs(args.workdir, class_weights(root))
  seeds = [int(s) for s in args.seeds.split(',') if s]
  rows = paired.run_grid(args.workdir, ARMS, seeds, 'foreground_iou', lambda arm, seed: (
      configs[arm], run_args(root, args.workdir, seed, args.steps)))
  summary = paired.summary_rows(rows, ARMS, 'ce', ('foreground_iou', 'miou'))
  table = markdown(summary, fractions)
  paired.write(args.output, {'fractions': fractions}, rows, summary, table)
  print(table)


if __name__ == '__main__':
  main()
