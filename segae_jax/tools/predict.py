"""Segments images with a trained run:
  python -m segae_jax.tools.predict --workdir=DIR --input=FOLDER_OR_IMAGE --output=OUT

      [--mode=auto|tile|resize] [--overlap=0.25] [--blend=gaussian|constant] [--tile_size=HxW]

Each image (any size; PNG, JPEG, TIFF, BMP) is converted to the model's channels and segmented at
its own resolution: images larger than the model's input by sliding-window inference (tiles of
the training size overlapping by --overlap, logits blended; segae_jax.inference.tiling), the others
resized to the input and the label map resized back (nearest neighbour); --mode=tile or resize
forces either. Writes OUT/<stem>_labels.png (uint8 class ids) and OUT/<stem>_overlay.png (colours
over the image), and prints one summary line.

OUT is written beside its place and renamed into it (tools.outputs), with a marker
(.segae_output.json) naming this tool: an existing OUT is replaced only when it is a previous
predict output (or empty); any other folder or file is refused before the model is restored.
"""
import os

import numpy as np
from absl import flags
from PIL import Image

from segae_jax import cli
from segae_jax.data.images import list_images
from segae_jax.tools import common, outputs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  common.define_run_flags('Training workdir of a segmentation model.', 'best')
  flags.DEFINE_string('input', None, 'An image file or a folder of images.')
  flags.DEFINE_string('output', None, 'Folder for the label maps and overlays: a new or empty '
                      'folder, or a previous predict output, which is replaced.')
  flags.DEFINE_integer('batch_size', 32, 'Images (or tiles) per forward pass.')
  common.define_inference_flags()


def predict(workdir: str, input_path: str, output: str, checkpoint: str = 'best',
            batch_size: int = 32, inference: common.Inference = common.Inference()):
  """Segments every image of `input_path`; returns ({stem: label map uint8 [h, w]} at image size,
  the restored common.TrainedRun).

  Raises:
    UserInputError: no such input or no image in it, an unreadable image, an `output` that is
      not a new or empty folder or a previous predict output or is not writable, not a workdir
      or no checkpoint, a model that does not segment, or a tile size it cannot take (all before
      anything is written); an OSError of the writing (one line, `output` left as it was).
  """
  from segae_jax.training import visualise

  files = list_images(input_path)
  outputs.check_folder(output, 'predict')  # Before the model is restored and run.
  run = common.load_run(workdir, checkpoint)
  originals = [common.read_input(f, run) for f in files]  # All checked first.
  run.require_segmentation(workdir)
  segment = run.segmenter(inference, batch_size)  # A bad --tile_size fails here.
  labels = segment(originals)
  results = {}
  with outputs.staged_folder(output, 'predict') as staging:
    for path, pixels, full in zip(files, originals, labels):
      stem = os.path.splitext(os.path.basename(path))[0]
      Image.fromarray(full).save(os.path.join(staging, f'{stem}_labels.png'))
      Image.fromarray(visualise.overlay(visualise.preview(pixels), full)).save(
          os.path.join(staging, f'{stem}_overlay.png'))
      results[stem] = full
  return results, run


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  results, run = predict(FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.checkpoint,
                         FLAGS.batch_size, common.Inference.from_flags())
  counts = np.bincount(np.concatenate([r.reshape(-1) for r in results.values()]),
                       minlength=len(run.class_names) or 1)
  total = counts.sum()
  names = run.class_names or [str(i) for i in range(len(counts))]
  shares = ', '.join(f'{names[c]} {counts[c] / total:.1%}' for c in np.argsort(-counts)[:4]
                     if counts[c])
  print(f'segmented {len(results)} images into {FLAGS.output} ({run.checkpoint} checkpoint, step '
        f'{run.step}); pixels: {shares}')


def run() -> None:
  """The installed command segae-predict (also python -m segae_jax.tools.predict)."""
  cli.run_command(main, define_flags, ['workdir', 'input', 'output'])


if __name__ == '__main__':
  run()
