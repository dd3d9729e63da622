"""Nuclei from a 16-bit microscope: training straight from the TIFFs against today's route through
8-bit PNGs, nucleus IoU of each.

  python -m benchmarks.nuclei --workdir=/tmp/nuclei [--seeds=0,1,2] [--steps=600]

The data, written here: 256x256 uint16 fluorescence-like images (background ~100 counts, 15-30
nuclei as soft ellipses whose brightness spans two orders of magnitude, 150 to 30,000 counts
above it, with shot noise) and their uint16 instance label TIFFs (ids 1..N); 24 for training and
8 for testing (split='folders'). The 8-bit copies are what a user converting for a tool that
reads only 8-bit images gets: each image's range min..max mapped to 0..255 (ImageJ's 8-bit
conversion with the default display range), saved as PNG; the masks stay the same TIFFs.

Arms, paired by seed, configs/folder.py on 64x64 windows at native scale (resize='center_crop'),
the instance masks read as foreground (data.mask_mode='foreground'), scored on the whole test
images at native resolution:

  png8          the 8-bit PNGs, data.normalize='unit'
  tiff16        the 16-bit TIFFs, data.normalize='percentile' (the training split's 0.5/99.5
                percentiles, then its mean and deviation: nnU-Net's CT scheme)
  tiff16_zscore the 16-bit TIFFs, data.normalize='zscore'

Results: --output JSON lines and its .md table (nucleus IoU mean ± sd, paired difference to
png8 with its 95% t interval, mIoU, wall time per run); finished runs are read back.
"""
import argparse
import os
from typing import Dict, List

import numpy as np
from PIL import Image

from benchmarks import paired
from benchmarks.common import RESULTS

ARMS = ('png8', 'tiff16', 'tiff16_zscore')
SIZE = 256


def nuclei_image(rng: np.random.Generator):
  """(uint16 [256, 256] image, uint16 [256, 256] instance ids)."""
  y, x = np.mgrid[:SIZE, :SIZE].astype(np.float32)
  signal = np.full((SIZE, SIZE), 100.0, np.float32)
  labels = np.zeros((SIZE, SIZE), np.uint16)
  for i in range(1, rng.integers(15, 31)):
    cy, cx = rng.uniform(10, SIZE - 10, 2)
    ry, rx = rng.uniform(5, 11, 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = y - cy, x - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    r = np.sqrt(u ** 2 + v ** 2)
    brightness = float(np.exp(rng.uniform(np.log(150), np.log(30000))))
    signal += brightness / (1 + np.exp((r - 1) * 8))  # Soft edge at r = 1.
    labels[(r <= 1) & (labels == 0)] = i
  image = rng.normal(signal, np.sqrt(signal))  # Shot noise.
  return np.clip(np.round(image), 0, 65535).astype(np.uint16), labels


def to_8_bit(image: np.ndarray) -> np.ndarray:
  """The image's min..max mapped to 0..255 (see the module doc)."""
  low, high = float(image.min()), float(image.max())
  return np.round((image.astype(np.float64) - low) / max(high - low, 1) * 255).astype(np.uint8)


def write_folders(root: str, num_train: int = 24, num_test: int = 8) -> Dict[str, float]:
  """root/tiff/{images,masks}/{train,test} and root/png8/images/... (masks shared); returns the
  nuclei's pixel fraction per split. Written once (paired.write_splits_once)."""
  import tifffile  # pylint: disable=import-outside-toplevel

  def write_example(rng, split, i):
    image, labels = nuclei_image(rng)
    tifffile.imwrite(os.path.join(root, 'tiff', 'images', split, f'cell{i:02d}.tif'), image)
    tifffile.imwrite(os.path.join(root, 'tiff', 'masks', split, f'cell{i:02d}.tif'), labels)
    Image.fromarray(to_8_bit(image)).save(os.path.join(root, 'png8', 'images', split,
                                                       f'cell{i:02d}.png'))
    return float((labels > 0).mean())
  return paired.write_splits_once(root, {'train': num_train, 'test': num_test},
                                  ('tiff/images', 'tiff/masks', 'png8/images'), write_example)


def run_args(root: str, workdir: str, arm: str, seed: int, steps: int) -> List[str]:
  images = os.path.join(root, 'png8' if arm == 'png8' else 'tiff', 'images')
  normalize = {'png8': 'unit', 'tiff16': 'percentile', 'tiff16_zscore': 'zscore'}[arm]
  return [f'--config.data.images_dir={images}', f'--config.data.masks_dir={root}/tiff/masks',
          '--config.data.split=folders', '--config.data.channels=1',
          '--config.data.mask_mode=foreground', '--config.data.num_classes=2',
          f'--config.data.normalize={normalize}', '--config.data.resize=center_crop',
          # Cross-entropy alone (folder.py's loss when this was first measured), for every arm.
          '--config.loss.dice=0.0',
          '--config.data.image_size=(64, 64)', f'--config.data.tfds_dir={workdir}/tfds',
          '--config.batch_size=16', '--config.eval_batch_size=16', '--config.num_pictures=4',
          f'--config.num_train_steps={steps}', f'--config.eval_every_steps={steps // 3}',
          f'--config.checkpoint_every_steps={steps // 3}', f'--config.seed={seed}']


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--output', default=os.path.join(RESULTS, 'nuclei.jsonl'))
  args = parser.parse_args(argv)
  root = os.path.join(args.workdir, 'data')
  fractions = write_folders(root)
  seeds = [int(s) for s in args.seeds.split(',') if s]
  rows = paired.run_grid(args.workdir, ARMS, seeds, 'nucleus_iou', lambda arm, seed: (
      'folder', run_args(root, args.workdir, arm, seed, args.steps)))
  summary = paired.summary_rows(rows, ARMS, 'png8', ('nucleus_iou', 'miou'))
  table = (f'Nuclei: {100 * fractions["train"]:.1f}% of the training pixels.\n\n' +
           paired.markdown(summary, 'png8', 'nucleus_iou', 'nucleus IoU'))
  paired.write(args.output, {'fractions': fractions}, rows, summary, table)
  print(table)


if __name__ == '__main__':
  main()
