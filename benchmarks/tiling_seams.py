"""How well tiled inference hides its seams, with this project's Gaussian importance map against
MONAI's (`python -m benchmarks.tiling_seams`; JSON lines).

A k x k box filter (zero padding) stands in for a convolutional network: exact away from a
tile's border, wrong near it. Tiled with 25% overlap, each blend's largest absolute error
against the untiled filter is taken away from the image's own border (k pixels), where only the
tiling makes the output wrong. Blends: 'constant' (equal weights), 'gaussian' (tiling.py: peak 1,
floored at the smallest float32) and 'monai_gaussian' (monai.data.utils.compute_importance_map:
the same Gaussian floored at max(its minimum, 1e-3)). No timing: nothing else needs to be idle.
"""
import argparse
import json
from typing import Tuple

import numpy as np

from segae_jax.inference import tiling

CASES = (((16, 24), (50, 70), 5), ((64, 64), (200, 200), 5), ((64, 64), (200, 200), 15),
         ((128, 128), (400, 400), 31))


def box_filter(images: np.ndarray, k: int) -> np.ndarray:
  """[n, h, w, c] -> the k x k mean with zero padding, same shape."""
  r = k // 2
  padded = np.pad(images, ((0, 0), (r, r), (r, r), (0, 0)))
  h, w = images.shape[1:3]
  return sum(padded[:, i:i + h, j:j + w] for i in range(k) for j in range(k)) / (k * k)


def monai_importance_map(tile: Tuple[int, int]) -> np.ndarray:
  """MONAI's Gaussian map, written from its definition (sigma_scale 0.125, 1e-3 floor)."""
  axes = [np.exp((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) ** 2
                 / (-2.0 * (tiling.SIGMA_SCALE * n) ** 2)) for n in tile]
  weights = np.outer(axes[0], axes[1]).astype(np.float32)
  return np.maximum(weights, max(float(weights.min()), 1e-3))


def blend(tile, image, fn, weights: np.ndarray) -> np.ndarray:
  """Tiled fn over an image at least a tile large, blended with `weights` (tiling's windows)."""
  th, tw = tile
  windows = tiling.Tiling(tile, 0.25).windows(*image.shape[:2])
  outputs = fn(np.stack([image[t:t + th, l:l + tw] for t, l in windows]))
  total = np.zeros(image.shape, np.float32)
  norm = np.zeros(image.shape[:2] + (1,), np.float32)
  for (t, l), out in zip(windows, outputs):
    total[t:t + th, l:l + tw] += weights[..., None] * out
    norm[t:t + th, l:l + tw] += weights[..., None]
  return total / norm


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', default='')
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  lines = []
  for tile, size, k in CASES:
    image = rng.random(size + (2,), np.float32)
    fn = lambda tiles, k=k: box_filter(tiles, k)
    truth = fn(image[None])[0]
    inner = (slice(k, -k), slice(k, -k))
    maps = {'constant': tiling.importance_map(tile, 'constant'),
            'gaussian': tiling.importance_map(tile, 'gaussian'),
            'monai_gaussian': monai_importance_map(tile)}
    errors = {name: float(np.abs(blend(tile, image, fn, w) - truth)[inner].max())
              for name, w in maps.items()}
    lines.append({'figure': 'tiling_seams', 'tile': list(tile), 'image': list(size),
                  'box_filter': k, 'overlap': 0.25, 'max_abs_error': errors})
  text = ''.join(json.dumps(line) + '\n' for line in lines)
  print(text, end='')
  if args.output:
    with open(args.output, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
