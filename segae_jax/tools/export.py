"""Writes a trained segmentation model that runs without this repository's workdir, config or
checkpoint:
  python -m segae_jax.tools.export --workdir=DIR --output=model/ [--checkpoint=best]

model/logits.jaxexport is the `jax.export` serialisation (StableHLO; no TensorFlow) of the
inference function float32 pixels [batch, height, width, channels] in the training images' units
(0..255 for 8-bit images) -> float32 logits [batch, height, width, classes]: the batch dimension
symbolic, the weights and the input normalisation inside, lowered for CPU, CUDA and TPU.
model/model.json holds what it needs around it: the input shape, the class names, where it came
from (the format: segae_jax/inference/export.py). Read it back with

  segae_jax.Segmenter.from_export('model/').predict(image)   # images of any size, tiled
  jax.export.deserialize(open('model/logits.jaxexport', 'rb').read()).call(pixels)

Convolutions are exported as XLA's (a oneDNN custom call does not serialise), so CPU logits
differ from the workdir's oneDNN ones by float rounding only.

The folder is written beside --output and renamed into place (tools.outputs), with a marker
(.segae_output.json) naming this tool: an existing --output is replaced only when it is a
previous export (or empty); a folder of anything else is refused, before the model is restored.
"""
import json
import os

from absl import flags

from segae_jax import cli
from segae_jax.inference.export import FORMAT, FUNCTION_FILE, PLATFORMS, SPEC_FILE
from segae_jax.tools import common, outputs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program."""
  common.define_run_flags('Training workdir of a segmentation model.', 'best')
  flags.DEFINE_string('output', None, 'Folder to write the exported model to: a new or empty '
                      'folder, or a previous export, which is replaced; anything else is refused.')


def export_run(workdir: str, output: str, checkpoint: str = 'best') -> dict:
  """Exports the run's model (see the module doc) into `output`, written in a staging folder
  beside it and renamed into place (tools.outputs), so a failed export leaves no partial model
  and the previous one whole. Returns model.json's contents.

  Raises:
    UserInputError: `output` is not a new or empty folder or a previous export, or not
      writable (checked first); not a workdir, no checkpoint, or a model that does not segment
      (before anything is written); an OSError of the writing (one line, nothing changed).
  """
  import jax
  from jax import export
  outputs.check_folder(output, 'export')
  run = common.load_run(workdir, checkpoint)
  run.require_segmentation(workdir)
  run = run.with_conv_impl('xla')
  height, width, channels = run.image_shape
  batch, = export.symbolic_shape('batch')
  fn = jax.jit(lambda pixels: run.pixel_logits(run.variables, pixels))
  exported = export.export(fn, platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, height, width, channels), 'float32'))
  spec = {'format': FORMAT, 'input_shape': [height, width, channels], 'input_dtype': 'float32',
          'input_units': f'pixels as stored ({run.normalization.dtype}; 0..255 for 8-bit images)',
          'normalization': run.normalization.to_dict(),
          'output': 'float32 logits [batch, height, width, classes]',
          'num_classes': int(exported.out_avals[0].shape[-1]),
          'class_names': list(run.class_names), 'platforms': list(PLATFORMS),
          'jax_version': jax.__version__, 'model': run.config.model.name,
          **common.result_header(workdir, run, model=False)}
  with outputs.staged_folder(output, 'export') as staging:
    with open(os.path.join(staging, FUNCTION_FILE), 'wb') as f:
      f.write(exported.serialize())
    with open(os.path.join(staging, SPEC_FILE), 'w') as f:
      json.dump(spec, f, indent=2)
  return spec


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  spec = export_run(FLAGS.workdir, FLAGS.output, FLAGS.checkpoint)
  print(f'exported {spec["model"]} ({spec["checkpoint"]} checkpoint, step {spec["step"]}; input '
        f'{"x".join(map(str, spec["input_shape"]))}, {spec["num_classes"]} classes) to '
        f'{FLAGS.output}')


def run() -> None:
  """The installed command segae-export (also python -m segae_jax.tools.export)."""
  cli.run_command(main, define_flags, ['workdir', 'output'])


if __name__ == '__main__':
  run()
