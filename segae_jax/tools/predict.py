"""Segments images with a trained run:
  python -m segae_jax.tools.predict --workdir=DIR --input=FOLDER_OR_IMAGE --output=OUT

Each image (any size; PNG, JPEG, TIFF, BMP) is converted to the model's channels, resized to its
input size, segmented, and the label map resized back to the image's own size (nearest
neighbour). Writes OUT/<stem>_labels.png (uint8 class ids) and OUT/<stem>_overlay.png (colours
over the image), and prints one summary line.
"""
import os

import numpy as np
from absl import flags
from PIL import Image

from segae_jax import cli
from segae_jax.data.images import list_images
from segae_jax.tools import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  common.define_run_flags('Training workdir of a segmentation model.', 'best')
  flags.DEFINE_string('input', None, 'An image file or a folder of images.')
  flags.DEFINE_string('output', None, 'Folder for the label maps and overlays (created).')
  flags.DEFINE_integer('batch_size', 32, 'Images per forward pass.')


def predict(workdir: str, input_path: str, output: str, checkpoint: str = 'best',
            batch_size: int = 32):
  """Segments every image of `input_path`; returns ({stem: label map uint8 [h, w]} at image size,
  the restored common.TrainedRun).

  Raises:
    UserInputError: no such input or no image in it, an unreadable image, not a workdir or no
      checkpoint, or a model that does not segment (all before anything is written).
  """
  from segae_jax.training import visualise

  files = list_images(input_path)
  run = common.load_run(workdir, checkpoint)
  originals, inputs = common.read_images(files, run.image_shape)
  run.require_segmentation(workdir)
  labels = run.infer(inputs, common.seg_labels, batch_size).astype(np.uint8)
  os.makedirs(output, exist_ok=True)
  results = {}
  for path, img, label in zip(files, originals, labels):
    stem = os.path.splitext(os.path.basename(path))[0]
    full = np.asarray(Image.fromarray(label).resize(img.size, Image.NEAREST))
    Image.fromarray(full).save(os.path.join(output, f'{stem}_labels.png'))
    rgb = np.asarray(img.convert('RGB'))
    Image.fromarray(visualise.overlay(rgb, full)).save(os.path.join(output, f'{stem}_overlay.png'))
    results[stem] = full
  return results, run


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  results, run = predict(FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.checkpoint,
                         FLAGS.batch_size)
  counts = np.bincount(np.concatenate([r.reshape(-1) for r in results.values()]),
                       minlength=len(run.class_names) or 1)
  total = counts.sum()
  names = run.class_names or [str(i) for i in range(len(counts))]
  shares = ', '.join(f'{names[c]} {counts[c] / total:.1%}' for c in np.argsort(-counts)[:4]
                     if counts[c])
  print(f'segmented {len(results)} images into {FLAGS.output} ({run.checkpoint} checkpoint, step '
        f'{run.step}); pixels: {shares}')


if __name__ == '__main__':
  cli.run_command(main, define_flags, ['workdir', 'input', 'output'])
