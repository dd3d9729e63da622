"""Run outputs: metrics.jsonl, TensorBoard event files (tensorboardX, no TensorFlow needed), PNGs.

Only process 0 writes; other processes get a writer that does nothing, so callers need no checks.
"""
import json
from typing import List, Mapping, Optional

import numpy as np
from PIL import Image

from segae_jax.training import paths


class JsonLines:
  """Appends JSON records, one per line, to `path` (a local file or a URL). Object stores have
  no append, so there the file is rewritten whole at each record (its earlier lines are read
  once, at opening, as a resumed run continues its file)."""

  def __init__(self, path: str):
    self.path = path
    self._file = None
    self._lines: Optional[List[str]] = None
    if paths.is_url(path):
      self._lines = paths.read_text(path).splitlines(True) if paths.exists(path) else []
    else:
      self._file = open(path, 'a')

  def write(self, record: Mapping) -> None:
    line = json.dumps(record) + '\n'
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
      return
    self._lines.append(line)
    with paths.open_file(self.path, 'w') as f:
      f.write(''.join(self._lines))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


class MetricWriter:
  """Appends one JSON line per `write_scalars` call to `<workdir>/metrics.jsonl` and mirrors the
  scalars and images to TensorBoard under `<workdir>/tensorboard` (`workdir` a local folder or
  a URL; tensorboardX writes gs:// and s3:// itself)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._jsonl = JsonLines(paths.join(workdir, 'metrics.jsonl'))
      self._tb = SummaryWriter(logdir=paths.join(workdir, 'tensorboard'), flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write({'step': int(step), **{k: float(v) for k, v in scalars.items()}})
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), int(step))

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [height, width, channels]."""
    if self.enabled:
      self._tb.add_image(name, image, int(step), dataformats='HWC')

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def write_json(path: str, obj: Mapping, sort_keys: bool = True) -> None:
  """Writes JSON atomically (temporary file + rename): readers never see a half-written file.
  Keys are sorted unless `sort_keys` is False (where their order means something). `path`: a
  local file or a URL."""
  tmp = path + '.tmp'
  with paths.open_file(tmp, 'w') as f:
    f.write(json.dumps(obj, indent=2, sort_keys=sort_keys) + '\n')
  paths.replace(tmp, path)


def image_grid(images: np.ndarray, num_columns: int, padding: int = 2) -> np.ndarray:
  """Tiles float images [n, h, w, c] in [0, 1] into one uint8 [rows*(h+p)+p, cols*(w+p)+p, c]
  picture (row-major, white padding). Grayscale stays one channel."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  rows = -(-n // num_columns)
  grid = np.ones((rows * (h + padding) + padding, num_columns * (w + padding) + padding, c),
                 np.float32)
  for i in range(n):
    r, col = divmod(i, num_columns)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = images[i]
  return np.round(grid * 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
  """Saves uint8 [h, w, 1 or 3] as PNG (a local file or a URL) through a temporary file (no
  half-written pictures)."""
  img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  tmp = path + '.tmp.png'
  with paths.open_file(tmp, 'wb') as f:
    img.save(f, format='PNG')
  paths.replace(tmp, path)
