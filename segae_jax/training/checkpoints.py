"""Checkpoints through orbax; the only module that imports it, so an orbax API move is one file.

A checkpoint at step N holds three items:
  'state': the pytree {'train_state': TrainState, 'rng': the run's PRNG key}, unreplicated;
  'data':  the input iterator's position (JSON), so a resumed run reads the exact next batch;
  'meta':  what the checkpoint is of (model config, dataset, image shape; JSON), checked on resume
           so a workdir of another model is refused instead of overwritten.
"""
import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from segae_jax.errors import UserInputError
from segae_jax.training import paths

log = logging.getLogger(__name__)

# What checkpoints written before a meta field existed hold: every run trained 'supervised' then,
# on 8-bit images scaled to [0, 1] (data.normalize.Normalization()).
META_DEFAULTS = {'objective': 'supervised', 'objective_state': [],
                 'normalization': {'mode': 'unit', 'dtype': 'uint8', 'mean': [], 'std': [],
                                   'low': [], 'high': []}}


def abstract_tree(tree, sharding=None):
  """The target orbax restores `tree`'s structure into: with a sharding, shape/dtype/sharding
  skeletons (jax.Arrays placed there); without one, numpy placeholders (host numpy arrays, which
  every process of a multi-process run can read on its own)."""
  if sharding is None:
    return jax.tree.map(lambda x: np.zeros(np.shape(x), jnp.result_type(x)), tree)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), sharding=sharding), tree)


class Checkpointer:
  """Saves and restores training checkpoints under `directory`.

  Keeps the newest `max_to_keep` steps, or with `best_metric` (e.g. 'miou') the `max_to_keep`
  steps with the highest value of that metric (passed to `save`). Saves are asynchronous; call
  `wait_until_finished()` (or `close()`) before the process exits.
  """

  def __init__(self, directory: str, max_to_keep: int = 3, best_metric: Optional[str] = None):
    self.directory = paths.resolve(directory, 'checkpoint directory')
    self.best_metric = best_metric
    # A run's two managers (checkpoints/, checkpoints_best/) can save one step at once, and
    # orbax names its multi-process barriers by step: without a prefix of their own, one
    # process's second barrier of a name fails ("already ongoing") and the processes hang.
    barriers = ocp.options.MultiprocessingOptions(
        barrier_sync_key_prefix=epath.Path(self.directory).name)
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 multiprocessing_options=barriers)
    if best_metric:
      self._options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True, best_mode='max',
          best_fn=lambda metrics: metrics[best_metric], multiprocessing_options=barriers)
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_state: Dict[str, Any], meta: Dict[str, Any],
           metrics: Optional[Dict[str, Any]] = None) -> None:
    """Saves `state` (a pytree), the data iterator state and `meta` (JSON) as step `step`;
    `metrics` must hold `best_metric` when the checkpointer keeps the best steps."""
    kwargs = {}
    if self.best_metric:
      if self.best_metric not in (metrics or {}):
        raise UserInputError(f'config.best_metric={self.best_metric!r} is not a test metric of this '
                             f'run; available: {", ".join(sorted(metrics or {}))}')
      kwargs['metrics'] = {self.best_metric: float(metrics[self.best_metric])}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), **kwargs)

  def read_meta(self, step: int) -> Dict[str, Any]:
    return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])

  def check_compatible(self, step: int, meta: Dict[str, Any],
                       saved: Optional[Dict[str, Any]] = None) -> None:
    """Raises UserInputError if the checkpoint at `step` (its meta `saved`, read if not given)
    is of another model or dataset."""
    saved = self.read_meta(step) if saved is None else saved
    for key in meta:
      if _jsonable(saved.get(key, META_DEFAULTS.get(key))) != _jsonable(meta[key]):
        raise UserInputError(
            f'workdir checkpoint {self.directory}/{step} holds {key}={saved.get(key)}, but this '
            f'run has {key}={meta[key]}; use another --workdir (nothing was overwritten)')

  def restore(self, step: int, target, sharding=None) -> Tuple[Any, Dict[str, Any]]:
    """Restores (state, data_state) at `step` into the structure of `target` (arrays or
    ShapeDtypeStructs), placing arrays with `sharding`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_tree(target, sharding)),
        data=ocp.args.JsonRestore()))
    return restored['state'], dict(restored['data'])

  def read_state(self, step: int) -> Dict[str, Any]:
    """The saved state at `step` exactly as written, without a target structure: nested dicts
    of host arrays (for comparing or inspecting checkpoints)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    return jax.device_get(restored['state'])

  def quarantine(self, step: int) -> str:
    """Moves the (damaged) checkpoint `step` to `<directory>.damaged/<step>[.n]` and reloads the
    manager, so the step can be written again; returns the new path. Only process 0 moves files;
    every process waits for it."""
    damaged = epath.Path(self.directory + '.damaged')
    target = damaged / str(step)
    suffix = 0
    while target.exists():
      suffix += 1
      target = damaged / f'{step}.{suffix}'
    self._manager.close()
    if jax.process_index() == 0:
      damaged.mkdir(parents=True, exist_ok=True)
      epath.Path(self.directory, str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'quarantine checkpoint {step}')
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    return str(target)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def steps_in(directory: str) -> list:
  """The steps of the whole checkpoints in `directory` (its subfolders named by a step number;
  orbax writes a step under a temporary name and renames it when complete), [] if none."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _jsonable(x):
  """Lists and tuples compare equal after a JSON round trip."""
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  return x


def restore_latest_intact(ckpt: Checkpointer, meta: Mapping[str, Any], target,
                          sharding=None):
  """Restores the newest checkpoint that reads back whole, moving damaged newer ones aside.

  A step whose files are truncated, missing or unreadable is moved to `<checkpoints>.damaged/`
  (kept for inspection; the resumed run will write that step again) with a warning naming it.

  Returns:
    ((state tree, data state), step), or None when the directory holds no checkpoint.
  Raises:
    UserInputError: a checkpoint of another model or dataset (nothing moved), or no intact
      checkpoint among several (rather than a silent fresh start).
  """
  steps = sorted(ckpt.all_steps(), reverse=True)
  damaged = []
  for step in steps:
    try:
      saved_meta = ckpt.read_meta(step)
    except Exception as e:  # noqa: BLE001 -- any read failure means a damaged checkpoint.
      damaged.append((step, e))
      continue
    ckpt.check_compatible(step, meta, saved_meta)
    try:
      restored = ckpt.restore(step, target, sharding)
    except Exception as e:  # noqa: BLE001
      damaged.append((step, e))
      continue
    for bad, error in damaged:
      where = ckpt.quarantine(bad)
      log.warning('Checkpoint step %d is damaged (%s: %s); moved to %s, resuming from step %d.',
                  bad, type(error).__name__, ' '.join(str(error).split())[:200], where, step)
    return restored, step
  if damaged:
    raise UserInputError(
        f'no intact checkpoint in {ckpt.directory}: steps {", ".join(str(b) for b, _ in damaged)} '
        f'fail to read ({type(damaged[0][1]).__name__}); move the directory away to start afresh')
  return None
