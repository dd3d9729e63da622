"""Pretrain -> fine-tune: a new run starts from the matching parameters of another run's checkpoint
(config.init_from, config.init_checkpoint, config.init_dont_load).

Parameters and BatchNorm statistics are matched by their path ('encoder/level0/conv0/kernel'):
each one the new model has and the checkpoint holds with the same shape is loaded, unless its
path matches one of the init_dont_load regular expressions (re.fullmatch, as big_vision's
`merge_params(loaded, inited, dont_load)`); the others keep their initial values (e.g. a fresh
segmentation decoder on a pretrained encoder). The optimizer starts afresh. Models of the U-Net
family (unet, segae, unet_ae, vae_unet) share their encoder's names, so any of them can start
from any other; other models start only from a model of their own kind.
"""
import json
import logging
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from segae_jax import models
from segae_jax.errors import UserInputError
from segae_jax.training import checkpoints, paths
from segae_jax.training.state import TrainState

log = logging.getLogger(__name__)


def source_checkpoint(workdir: str, which) -> Tuple[str, int]:
  """(checkpoint directory, step) of config.init_checkpoint `which` ('latest', 'best' or a step
  number) in the training workdir `workdir`.

  Raises:
    UserInputError: a missing workdir or checkpoint, or a bad `which`.
  """
  key = 'config.init_from'
  if not paths.exists(paths.join(workdir, 'config.json')):
    raise UserInputError(f'{key}={workdir}: not a training workdir (no config.json)')
  best = str(which) == 'best'
  if not (best or str(which) == 'latest' or str(which).isdigit()):
    raise UserInputError(f'config.init_checkpoint={which!r}: expected latest, best or a step '
                         'number')
  directory = paths.join(workdir, 'checkpoints_best' if best else 'checkpoints')
  steps = checkpoints.steps_in(directory)
  if not steps:
    raise UserInputError(f'{key}={workdir} has no checkpoint in {directory}')
  step = max(steps) if not str(which).isdigit() else int(which)
  if step not in steps:
    raise UserInputError(f'config.init_checkpoint={which}: {directory} holds steps '
                         f'{", ".join(map(str, sorted(steps)))}')
  return directory, step


def check_kind(source_model: str, model: str, workdir: str) -> None:
  """Raises UserInputError unless a `model` can start from a `source_model` (module doc)."""
  family = lambda name: issubclass(models.MODELS.get(name), models.UNetBase)
  if source_model != model and not (family(source_model) and family(model)):
    raise UserInputError(f'config.init_from={workdir} holds a {source_model!r} model; a '
                         f'{model!r} starts only from its own kind'
                         + (' or the U-Net family (unet, segae, unet_ae, vae_unet)'
                            if family(model) else ''))


def merge(inited: Mapping, loaded: Mapping, dont_load: Sequence[str], what: str,
          workdir: str) -> Tuple[Dict, int]:
  """(inited with every matching leaf of `loaded`, the number loaded); see the module doc.

  Raises:
    UserInputError: a matching path whose shapes differ.
  """
  flat_init = flax.traverse_util.flatten_dict(dict(inited), sep='/')
  flat_loaded = flax.traverse_util.flatten_dict(dict(loaded), sep='/')
  merged, count = {}, 0
  for path, value in flat_init.items():
    skip = any(re.fullmatch(pattern, path) for pattern in dont_load)
    if skip or path not in flat_loaded:
      merged[path] = value
      continue
    source = np.asarray(flat_loaded[path])
    if source.shape != np.shape(value):
      raise UserInputError(f'config.init_from={workdir}: {what} {path} has shape '
                           f'{source.shape} there and {np.shape(value)} here; add it to '
                           'config.init_dont_load to keep it fresh')
    merged[path] = jnp.asarray(source, jnp.result_type(value))
    count += 1
  return flax.traverse_util.unflatten_dict(merged, sep='/'), count


def check_source(config: ml_collections.ConfigDict) -> Tuple[str, int, ml_collections.ConfigDict]:
  """(checkpoint directory, step, the source run's config) of config.init_from, after checking
  that the checkpoint exists and holds a model this one can start from.

  Raises:
    UserInputError: a missing workdir or checkpoint, a bad init_checkpoint, a model of another
      kind, or a bad regular expression in init_dont_load.
  """
  workdir = paths.resolve(config.init_from, 'config.init_from')
  directory, step = source_checkpoint(workdir, config.get('init_checkpoint', 'latest'))
  source = ml_collections.ConfigDict(json.loads(paths.read_text(paths.join(workdir, 'config.json'))))
  check_kind(source.model.name, config.model.name, workdir)
  for pattern in config.get('init_dont_load', ()) or ():
    try:
      re.compile(pattern)
    except re.error as e:
      raise UserInputError(f'config.init_dont_load: {pattern!r} is not a regular expression '
                           f'({e})') from None
  return directory, step, source


def init_from(config: ml_collections.ConfigDict, state: TrainState,
              checked: Optional[Tuple[str, int, ml_collections.ConfigDict]] = None) -> TrainState:
  """`state` with the parameters and BatchNorm statistics of config.init_from's checkpoint
  loaded (module doc) and a fresh optimizer state; `state` itself when init_from is ''.
  `checked`: what check_source returned, if the caller has already called it.

  Raises:
    UserInputError: as check_source, shapes that do not match, or nothing to load.
  """
  if not config.get('init_from', ''):
    return state
  directory, step, source = checked or check_source(config)
  workdir = str(epath.Path(directory).parent)
  dont_load = list(config.get('init_dont_load', ()) or ())
  saved = checkpoints.Checkpointer(directory)
  try:
    loaded = saved.read_state(step)['train_state']
  finally:
    saved.close()
  params, n_params = merge(state.params, loaded['params'], dont_load, 'parameter', workdir)
  batch_stats, n_stats = merge(state.batch_stats or {}, loaded.get('batch_stats') or {},
                               dont_load, 'BatchNorm statistic', workdir)
  if not n_params:
    raise UserInputError(f'config.init_from={workdir}: no parameter of its '
                         f'{source.model.name!r} model matches this {config.model.name!r} '
                         '(or config.init_dont_load excludes them all)')
  total = len(jax.tree.leaves(state.params))
  log.info('Loaded %d of %d parameter arrays and %d BatchNorm statistics from %s/%d.',
           n_params, total, n_stats, directory, step)
  return state.replace(params=params, batch_stats=batch_stats if state.batch_stats else
                       state.batch_stats, opt_state=state.tx.init(params))
