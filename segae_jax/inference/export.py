"""The exported-model format: a folder that runs a trained segmentation model without its
workdir, config or checkpoint (written by `segae-export`, segae_jax/tools/export.py; read back by
Segmenter.from_export).

  FUNCTION_FILE (logits.jaxexport)  the `jax.export` serialisation (StableHLO) of float32 pixels
      [batch, height, width, channels] in the training images' units -> float32 logits [batch,
      height, width, classes], the batch dimension symbolic, lowered for PLATFORMS.
  SPEC_FILE (model.json)  what it needs around it: FORMAT, the input shape, the class names, the
      input normalisation, where it came from.
"""
import json
import os
from typing import Any, Callable, Dict, Tuple

import numpy as np

from segae_jax.errors import UserInputError

FUNCTION_FILE, SPEC_FILE = 'logits.jaxexport', 'model.json'
PLATFORMS = ('cpu', 'cuda', 'tpu')
FORMAT = 1  # Of model.json; raised when its fields change meaning.


def read(path: str) -> Tuple[Callable[[np.ndarray], np.ndarray], Dict[str, Any]]:
  """(logits, spec) of the model exported into `path`: logits maps float32 pixels [batch, height,
  width, channels] (numpy) to float32 logits [batch, height, width, classes] (numpy); spec is
  model.json's contents.

  Raises:
    UserInputError: `path` holds no model.json and logits.jaxexport, or a model.json of another
      format.
  """
  from jax import export  # pylint: disable=import-outside-toplevel
  spec_path, function_path = os.path.join(path, SPEC_FILE), os.path.join(path, FUNCTION_FILE)
  if not (os.path.isfile(spec_path) and os.path.isfile(function_path)):
    raise UserInputError(f'{path}: no exported model ({SPEC_FILE} and {FUNCTION_FILE}); write one '
                         'with segae-export --workdir=... --output=...')
  with open(spec_path) as f:
    spec = json.load(f)
  if spec.get('format') != FORMAT:
    raise UserInputError(f'{spec_path}: format {spec.get("format")!r}; this version reads '
                         f'format {FORMAT}')
  with open(function_path, 'rb') as f:
    exported = export.deserialize(bytearray(f.read()))
  return (lambda pixels: np.asarray(exported.call(np.asarray(pixels, np.float32)))), spec
