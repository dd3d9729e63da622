"""How a folder dataset stores 16-bit images: 16-bit PNG against the zlib-compressed array that
data.local.image_feature writes, on microscopy-like images made here (smooth background, bright
blobs, Poisson-like noise), bytes per image and decode time.

  python -m benchmarks.storage_formats [--size=512] [--images=20] [--output=FILE.jsonl]

Prints one JSON line per format (and appends them to --output): mean encoded bytes, compression
ratio against the raw pixels, median decode milliseconds per image. Run alone on the machine.
"""
import argparse
import io
import json
import os
import time
import zlib

import numpy as np
from PIL import Image


def microscopy_like(size: int, rng: np.random.Generator) -> np.ndarray:
  """uint16 [size, size]: a smooth background near 1,000, 30 Gaussian blobs up to ~20,000, and
  noise with the variance of the signal (photon counts)."""
  y, x = np.mgrid[:size, :size].astype(np.float32)
  signal = 1000 + 200 * np.sin(x / size * 3) * np.cos(y / size * 2)
  for _ in range(30):
    cy, cx, radius = rng.uniform(0, size, 2).tolist() + [rng.uniform(4, 12)]
    signal += rng.uniform(5000, 20000) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / radius ** 2)
  return np.clip(rng.normal(signal, np.sqrt(signal)), 0, 65535).astype(np.uint16)


def png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def decode_png(encoded: bytes) -> np.ndarray:
  import cv2  # pylint: disable=import-outside-toplevel (tfds decodes PNG with OpenCV)
  return cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)


FORMATS = {
    'png16': (png_bytes, decode_png),
    # What tfds.features.Tensor(encoding='zlib') stores and decodes (zlib's default level).
    'zlib_array': (lambda image: zlib.compress(image.tobytes()),
                   lambda encoded: np.frombuffer(zlib.decompress(encoded), np.uint16)),
}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--images', type=int, default=20)
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  images = [microscopy_like(args.size, rng) for _ in range(args.images)]
  for name, (encode, decode) in FORMATS.items():
    encoded = [encode(image) for image in images]
    for image, data in zip(images, encoded):  # Lossless, or the figure means nothing.
      assert np.array_equal(decode(data).reshape(image.shape), image), name
    times = []
    for data in encoded:
      start = time.perf_counter()
      decode(data)
      times.append(time.perf_counter() - start)
    row = {'benchmark': 'storage_formats', 'date': time.strftime('%Y-%m-%d'), 'format': name,
           'image': f'{args.size}x{args.size} uint16', 'images': args.images,
           'bytes_mean': float(np.mean([len(d) for d in encoded])),
           'ratio_to_raw': float(np.mean([len(d) for d in encoded]) / images[0].nbytes),
           'decode_ms_median': 1000 * float(np.median(times))}
    print(json.dumps(row))
    if args.output:
      with open(args.output, 'a') as f:
        f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
  main()
