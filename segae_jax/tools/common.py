"""The backbone of the research tools: a trained run restored from its workdir and what every tool
does with it (inference in fixed-size batches, images of any size segmented at their own size,
the encoder's feature maps, the result header of a JSON file, tables, the --checkpoint and
inference flags).

Light to import (no JAX, no orbax until a run is restored), so a tool's `--help` stays fast.
"""
import dataclasses
import inspect
import json
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import ml_collections
import numpy as np
from absl import flags

from segae_jax import batch, plugins
from segae_jax.data import batching
from segae_jax.data.images import read_as_written
from segae_jax.data.normalize import Normalization, conform
from segae_jax.errors import UserInputError
from segae_jax.inference import model as inference_model, postprocess, tiling
from segae_jax.inference.model import seg_logits  # A head, beside seg_labels and the others.
from segae_jax.inference.segmenter import Inference, Segmenter

CHECKPOINT_KINDS = ('best', 'latest')
# What an output head receives: the model's outputs ({'seg_logits': ..., 'recon_logits': ...}).
Head = Callable[[Dict[str, Any]], Any]


def _calling_module(depth: int) -> str:
  """The module absl would file a flag under had the function `depth` frames up defined it: a
  program run with -m (__main__) under sys.argv[0], as absl does, so --help lists it."""
  frame = inspect.currentframe()
  for _ in range(depth + 1):
    frame = frame.f_back
  name = frame.f_globals.get('__name__')
  return sys.argv[0] if name == '__main__' else name


def define_checkpoint_flag(default: str, flag_values: flags.FlagValues = flags.FLAGS,
                           module_name: Optional[str] = None) -> None:
  """--checkpoint=best|latest with the tool's own default, filed under the calling module (so a
  tool's --help lists it beside its other flags)."""
  flags.DEFINE_enum('checkpoint', default, list(CHECKPOINT_KINDS), 'Which checkpoint to restore.',
                    flag_values=flag_values, module_name=module_name or _calling_module(1))


def define_run_flags(workdir_help: str, checkpoint: Optional[str] = None,
                     split_help: Optional[str] = None,
                     flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The flags naming the run a tool reads, filed under the calling module: --workdir (no
  default; cli.run_command marks it required), --checkpoint if given its default, and
  --split=train|test (default test) if given its help text."""
  module = _calling_module(1)
  flags.DEFINE_string('workdir', None, workdir_help, flag_values=flag_values, module_name=module)
  if split_help is not None:
    flags.DEFINE_enum('split', 'test', ['train', 'test'], split_help, flag_values=flag_values,
                      module_name=module)
  if checkpoint is not None:
    define_checkpoint_flag(checkpoint, flag_values, module)


def define_inference_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """--mode, --overlap, --blend and --tile_size of the shared inference path (Inference), filed
  under the calling module."""
  module = _calling_module(1)
  flags.DEFINE_enum('mode', 'auto', list(tiling.MODES),
                    'tile: sliding-window inference at the image\'s own resolution; resize: the '
                    'image resized to the model input; auto: tile images larger than the model '
                    'input, resize the others.', flag_values=flag_values, module_name=module)
  flags.DEFINE_float('overlap', 0.25, 'Tile overlap, a fraction in [0, 1) of the tile size.',
                     flag_values=flag_values, module_name=module)
  flags.DEFINE_enum('blend', 'gaussian', list(tiling.BLENDS),
                    'How overlapping tiles\' outputs are blended.', flag_values=flag_values,
                    module_name=module)
  flags.DEFINE_string('tile_size', '', 'Tile HxW in pixels (default: the training image size).',
                      flag_values=flag_values, module_name=module)
  flags.DEFINE_enum('tta', 'none', list(postprocess.TTA),
                    'Test-time augmentation: hflip averages the logits of the image and its '
                    'left-right mirror image (the flip the configs train with); flips adds the '
                    'up-down ones too (for models trained with them, or data without an up).',
                    flag_values=flag_values, module_name=module)
  flags.DEFINE_integer('min_component_size', 0, 'Connected components of a foreground class '
                       'smaller than this many pixels become background (0: keep all).',
                       flag_values=flag_values, module_name=module)
  flags.DEFINE_bool('fill_holes', False, 'Fill the holes each foreground class encloses.',
                    flag_values=flag_values, module_name=module)


def seg_labels(outputs: Dict[str, Any]):
  """Head: the arg-max class of each pixel, int [batch, height, width]."""
  return outputs['seg_logits'].argmax(-1)


def seg_probabilities(outputs: Dict[str, Any]):
  """Head: the softmax class probabilities, float32 [batch, height, width, classes]."""
  import jax
  return jax.nn.softmax(outputs['seg_logits'], -1)


@dataclasses.dataclass
class TrainedRun:
  """A restored run: its config, model, variables ({'params', maybe 'batch_stats'}) and step.

  The methods run the model in inference mode (train=False; a sampling model draws its noise
  from the fixed key PRNGKey(0), so the same images always give the same outputs). Images are
  float32 [batch, height, width, channels] of `image_shape`, normalised as the run trained
  (`normalization`: in [0, 1] for 'unit'), except pixel_logits', which normalises itself.
  """
  config: ml_collections.ConfigDict
  model: Any
  variables: Dict[str, Any]
  step: int
  checkpoint: str            # 'best' or 'latest': which one was restored.
  image_shape: Tuple[int, int, int]
  class_names: Sequence[str]
  # How the training pipeline made stored pixels its input (data.normalize).
  normalization: Normalization = Normalization()

  @property
  def input_size(self) -> Tuple[int, ...]:
    """(height, width) of the model input: image_shape's spatial sizes."""
    return batch.spatial_shape(self.image_shape, 0)

  def apply(self, variables: Dict[str, Any], images) -> Dict[str, Any]:
    """The model's outputs in inference mode (inference.model.apply); pure, so it composes
    inside jax.jit."""
    return inference_model.apply(self.model, variables, images)

  def output_names(self) -> List[str]:
    """The names of the model's outputs (shapes only, nothing is computed)."""
    import jax
    shapes = jax.eval_shape(self.apply, self.variables,
                            np.zeros((1,) + tuple(self.image_shape), np.float32))
    return sorted(shapes)

  def require_segmentation(self, workdir: str) -> None:
    """Raises UserInputError unless the model outputs 'seg_logits'."""
    if 'seg_logits' not in self.output_names():
      raise UserInputError(f'workdir {workdir} holds a {self.config.model.name!r} model, which '
                           'does not segment')

  def jit(self, head: Head) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled images -> numpy head(outputs) (the head runs inside the same jit)."""
    import jax
    compiled = jax.jit(lambda variables, x: head(self.apply(variables, x)))
    return lambda images: np.asarray(compiled(self.variables, np.asarray(images, np.float32)))

  def pixel_logits(self, variables: Dict[str, Any], pixels):
    """Pure: float32 pixels [batch, height, width, channels] in the stored images' units (0..255
    for 8-bit images, 0..65535 for 16-bit, as stored for float) -> float32 class logits [batch,
    height, width, classes], the run's input normalisation inside (the function tools.export
    serialises; inference.model.pixel_logits)."""
    return inference_model.pixel_logits(self.model, self.normalization, variables, pixels)

  def segmenter(self, inference: Inference, batch_size: int,
                segmenter_class: type = Segmenter) -> Segmenter:
    """The Segmenter of this run: its pixel_logits compiled at the input size and at the tile
    size of `inference` (the training size unless inference.tile_size says otherwise), made by
    `segmenter_class` (a subclass of inference.Segmenter, such as segae_jax.Segmenter).

    Raises:
      UserInputError: a bad tile size (see at_size).
    """
    import jax
    def compiled(run: 'TrainedRun'):
      fn = jax.jit(run.pixel_logits)
      return lambda pixels: np.asarray(fn(run.variables, np.asarray(pixels, np.float32)))
    tile_run, tiles = self.tiled(inference, batch_size)
    logits = compiled(self)  # Tiles of the input size (the default) share its compilation.
    return segmenter_class(logits, self.image_shape, self.class_names, inference, batch_size,
                           tile_logits=logits if tile_run is self else compiled(tile_run),
                           tile_size=tiles.tile, normalization=self.normalization)

  def infer(self, images: np.ndarray, head: Head, batch_size: int) -> np.ndarray:
    """head(outputs) of images [n, h, w, c] in batches of min(batch_size, n), the last one
    padded so the model compiles once: head's array [n, ...] (data.batching.map_batched)."""
    return batching.map_batched(self.jit(head), images, batch_size)

  def at_size(self, size: Sequence[int]) -> 'TrainedRun':
    """This run with its model taking images of `size` (height, width): itself at its own size;
    a segmentation model (fully convolutional) cloned to the new size.

    Raises:
      UserInputError: the model takes only its training size, or `size` is not divisible by the
        model's downsampling.
    """
    import jax
    from segae_jax import models
    size = (int(size[0]), int(size[1]))
    if size == self.input_size:
      return self
    own = 'x'.join(map(str, self.input_size))
    if not isinstance(self.model, models.SegmentationModel):
      raise UserInputError(f'--tile_size={size[0]}x{size[1]}: model {self.config.model.name!r} '
                           f'takes only its training size {own}')
    shape = size + tuple(self.image_shape[-1:])
    run = dataclasses.replace(self, model=self.model.clone(image_shape=shape), image_shape=shape)
    try:
      jax.eval_shape(run.apply, run.variables, np.zeros((1,) + shape, np.float32))
    except UserInputError as e:
      raise UserInputError(f'--tile_size={size[0]}x{size[1]}: {e}') from None
    return run

  def with_conv_impl(self, impl: str) -> 'TrainedRun':
    """This run with its model's convolutions computed by `impl` (config.conv_impl: 'xla' for
    jax.export, whose serialisation refuses oneDNN's custom calls); the same variables."""
    config = self.config.copy_and_resolve_references()
    config.conv_impl = impl
    model = inference_model.build_model(config, self.image_shape,
                                        getattr(self.model, 'num_classes', None))
    return dataclasses.replace(self, config=config, model=model)

  def tiled(self, inference: Inference, batch_size: int) -> Tuple['TrainedRun', tiling.Tiling]:
    """(this run at the tile size, the Tiling of `inference`): tiles of the training size unless
    inference.tile_size says otherwise.

    Raises:
      UserInputError: a bad tile size (see at_size).
    """
    size = tiling.parse_tile_size(inference.tile_size, self.input_size)
    return (self.at_size(size),
            tiling.Tiling(size, inference.overlap, inference.blend, batch_size))

  def make_tiling(self, inference: Inference, batch_size: int) -> tiling.Tiling:
    """The Tiling of `inference` for this model (see `tiled`).

    Raises:
      UserInputError: a bad tile size (see at_size).
    """
    return self.tiled(inference, batch_size)[1]

  def uses_tiles(self, inference: Inference, height: int, width: int) -> bool:
    """Whether a height x width image is tiled: --mode=tile, or auto and larger than the model
    input on an axis."""
    return tiling.is_tiled(inference.mode, self.input_size, height, width)

  def has_unet_encoder(self) -> bool:
    """True for the U-Net family (unet, segae, unet_ae, vae_unet): an `encoder` with levels."""
    from segae_jax import models
    return models.is_unet_family(self.model)

  def encoder_maps(self, variables: Dict[str, Any], images) -> List[Any]:
    """The U-Net encoder's feature maps of `images`: level 0 (full resolution) .. L-1 (the
    bottleneck), float32 [batch, height / 2**l, width / 2**l, features[l]]; pure (jit it)."""
    skips, bottleneck = self.model.apply(variables, images, False,
                                         method=lambda m, x, t: m.encoder(x, t))
    return list(skips) + [bottleneck]


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json.

  Raises:
    UserInputError: `workdir` holds no config.json.
  """
  from segae_jax.training import paths  # A local folder or a URL.
  path = paths.join(workdir, 'config.json')
  if not paths.exists(path):
    raise UserInputError(f'{path} not found: {workdir} is not a training workdir (train first with '
                         'segae-train --config=... --workdir=...)')
  return ml_collections.ConfigDict(json.loads(paths.read_text(path)))


def _open_checkpoint(workdir: str, checkpoint: str):
  """(kind restored, Checkpointer, step): the best checkpoint when asked for and kept, else the
  latest."""
  from segae_jax.training import checkpoints, paths
  candidates = (['best'] if checkpoint == 'best' else []) + ['latest']
  for candidate in candidates:
    directory = paths.join(workdir, 'checkpoints_best' if candidate == 'best' else 'checkpoints')
    if not checkpoints.steps_in(directory):
      continue
    manager = checkpoints.Checkpointer(directory)
    if manager.latest_step() is not None:
      return candidate, manager, manager.latest_step()
    manager.close()
  raise UserInputError(f'workdir {workdir} has no checkpoint (checkpoints/ is empty or missing)')


def load_run(workdir: str, checkpoint: str = 'best') -> TrainedRun:
  """Restores the best checkpoint (by config.best_metric; falls back to the latest when the run
  kept none) or the latest one.

  Raises:
    UserInputError: not a workdir, no checkpoint in it, an unknown `checkpoint` kind, or
      plug-ins its config.plugins names that fail to load.
  """
  import jax
  from segae_jax import training  # Heavy; keeps `--help` fast.
  from segae_jax.training import objectives, paths
  if checkpoint not in CHECKPOINT_KINDS:
    raise UserInputError(f'unknown checkpoint {checkpoint!r}; known: {", ".join(CHECKPOINT_KINDS)}')
  workdir = paths.resolve(workdir)
  config = load_config(workdir)
  plugins.load(config.get('plugins', ()))  # The run's own model or objective, if any.
  kind, ckpt, step = _open_checkpoint(workdir, checkpoint)
  meta = ckpt.read_meta(step)
  image_shape = tuple(meta['image_shape'])
  # Exactly the model training built (compute dtype, convolution implementation), and the
  # objective's state (an EMA teacher) that the checkpoint holds beside it.
  model = inference_model.build_model(config, image_shape, meta.get('num_classes'))
  objective = objectives.of_config(config, image_shape)
  objective.set_model(model)
  state = objective.init_state(training.create_train_state(config, model, image_shape,
                                                           jax.random.PRNGKey(0)))
  restored, _ = ckpt.restore(step, {'train_state': state, 'rng': jax.random.PRNGKey(0)},
                             jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  ckpt.close()
  state = restored['train_state']
  # The variables the run evaluated with (the teacher of a teacher objective, by default).
  return TrainedRun(config=config, model=model, variables=objective.eval_variables(state),
                    step=step, checkpoint=kind, image_shape=image_shape,
                    class_names=meta.get('class_names') or [],
                    normalization=Normalization.from_dict(meta.get('normalization')))


def segment_images(run: TrainedRun, images: Sequence[np.ndarray], inference: Inference,
                   batch_size: int) -> List[np.ndarray]:
  """run.segmenter(inference, batch_size)(images), for one list of images.

  Raises:
    UserInputError: a bad tile size.
  """
  return run.segmenter(inference, batch_size)(images)


def result_header(workdir: str, run: TrainedRun, checkpoint: bool = True,
                  model: bool = True) -> Dict[str, Any]:
  """The fields a tool's JSON result starts with: 'workdir' (absolute path), 'step', and unless
  turned off 'checkpoint' ('best' or 'latest') and 'model' (config.model.name)."""
  from segae_jax.training import paths
  header = {'workdir': paths.resolve(workdir), 'step': run.step}
  if checkpoint:
    header['checkpoint'] = run.checkpoint
  if model:
    header['model'] = run.config.model.name
  return header


Column = Union[str, Tuple[str, str]]


def _spec(column: Column) -> Tuple[str, str]:
  return (column, '') if isinstance(column, str) else column


def _cell(value: Any, spec: str) -> str:
  """A number in its column's format spec; text only aligned and padded to its width."""
  if isinstance(value, str):
    align, width = re.match(r'([<>^]?)(\d*)', spec).groups()
    return format(value, f'{align or ">"}{width}')
  return format(value, spec)


def format_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]],
                 markdown: bool = False) -> str:
  """A table as text, the header line first, one line per row.

  Args:
    columns: titles, or (title, format spec) pairs such as ('IoU', '7.4f') or ('class', '<16'):
      each cell is format(value, spec); text cells and the titles are padded to the spec's
      width, right-aligned unless the spec starts with '<' or '^'.
    rows: one sequence of cells per row; a row may stop short of the last columns.
    markdown: a Markdown table ('| a | b |', then '|---|---|'; '|' in a cell escaped) instead of
      cells separated by one space.

  Returns:
    The lines joined by newlines, no newline at the end.
  """
  specs = [_spec(c) for c in columns]
  header = [_cell(title, spec) for title, spec in specs]
  body = [[_cell(v, spec) for v, (_, spec) in zip(row, specs)] for row in rows]
  if not markdown:
    return '\n'.join(' '.join(cells) for cells in [header] + body)
  line = lambda cells: '| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |'
  return '\n'.join([line(header), '|' + '---|' * len(specs)] + [line(cells) for cells in body])


def read_input(path: str, run: TrainedRun) -> np.ndarray:
  """One image file to segment -> [height, width, channels] in the dtype the run's training
  images were stored in (run.normalization.dtype): read as written (data.images.read_as_written),
  then checked against the run (data.normalize.conform: the table of what is accepted, converted
  with one warning, e.g. an 8-bit grayscale image replicated into an RGB run, or refused, e.g. a
  16-bit image into an 8-bit run).

  Raises:
    UserInputError: one line naming the file: unreadable, or not representable in the run.
  """
  channels = run.image_shape[2]
  pixels, alpha = read_as_written(path, channels)
  return conform(pixels, path, channels, run.normalization, alpha=alpha)
