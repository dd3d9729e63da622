"""Checkpoints through orbax; the only module that imports it, so an orbax API move is one file.

A checkpoint at step N holds three items:
  'state': the pytree {'train_state': TrainState, 'rng': the run's PRNG key}, unreplicated;
  'data':  the input iterator's position (JSON), so a resumed run reads the exact next batch;
  'meta':  what the checkpoint is of (model config, dataset, image shape; JSON), checked on resume
           so a workdir of another model is refused instead of overwritten.
"""
import contextlib
import logging
import os
import shutil
import sys
import time
import traceback
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from segae_jax.errors import UserInputError
from segae_jax.training import paths, writers

log = logging.getLogger(__name__)

# The suffix of the folder orbax writes a step into before renaming it to the step's number
# (orbax.checkpoint._src.path.atomicity_types.TMP_DIR_SUFFIX, not exported).
TMP_SUFFIX = '.orbax-checkpoint-tmp'


class _OrbaxErrorLogs(logging.Filter):
  """Drops orbax's ERROR log records: a failed save logs the same error with a traceback from
  each thread it passed through (dozens of tracebacks for one full disk), and the error itself
  reaches Checkpointer as an exception, reported once (WriteFailed) or raised with its own
  traceback."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and
                f'{os.sep}orbax{os.sep}' in (record.pathname or ''))


# One instance, so that adding it again (each Checkpointer does) is a no-op.
_ORBAX_ERROR_LOGS = _OrbaxErrorLogs()


class _QuietClosedLoops:
  """A sys.unraisablehook that drops tensorstore's reports of writes finishing after the event
  loop awaiting them was closed, and passes everything else to `previous`.

  When one array write of a save fails (a full disk), orbax's coroutine raises and its event
  loop is closed while the save's other writes are still running; as each of those finishes,
  tensorstore calls the closed loop's call_soon_threadsafe and reports the RuntimeError('Event
  loop is closed') as unraisable: dozens of stray tracebacks after the one line that reports
  the failure. Nothing awaits those writes any more, so nothing is lost.
  """

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable):
    frames = traceback.extract_tb(unraisable.exc_traceback)
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == 'Event loop is closed' and
            frames and frames[0].name == 'call_soon_threadsafe'):
      self.previous(unraisable)


def _quiet_closed_loops() -> None:
  if not isinstance(sys.unraisablehook, _QuietClosedLoops):
    sys.unraisablehook = _QuietClosedLoops(sys.unraisablehook)


class _KeepLinkedSteps:
  """An orbax preservation policy: `base`'s choice, except that a step whose folder is a
  symbolic link is never pruned (the user made it; orbax cannot delete it, and must not delete
  what it points to). Warns once per such step that it is kept."""

  def __init__(self, base, directory: str):
    self._base, self._directory, self._warned = base, directory, set()

  def should_preserve(self, checkpoints: Sequence[Any], *, context) -> Sequence[bool]:
    keep = list(self._base.should_preserve(checkpoints, context=context))
    for i, info in enumerate(checkpoints):
      if not keep[i] and os.path.islink(os.path.join(self._directory, str(info.step))):
        keep[i] = True
        if info.step not in self._warned:
          self._warned.add(info.step)
          log.warning('Checkpoint step %d in %s is a symbolic link: kept, not pruned (remove it '
                      'yourself if it is no longer needed).', info.step, self._directory)
    return keep

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
    policies = ocp.checkpoint_managers
    keep = policies.LatestN(n=max_to_keep)
    best = {}
    if best_metric:
      best = {'best_mode': 'max', 'best_fn': lambda metrics: metrics[best_metric]}
      keep = policies.BestN(get_metric_fn=best['best_fn'], reverse=False, n=max_to_keep)
    self._options = ocp.CheckpointManagerOptions(
        create=True, multiprocessing_options=barriers,
        preservation_policy=_KeepLinkedSteps(keep, self.directory), **best)
    logging.getLogger('absl').addFilter(_ORBAX_ERROR_LOGS)  # orbax logs through absl.
    _quiet_closed_loops()
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    self._in_flight: Optional[int] = None  # The step of the save not yet waited for.
    self._failed = False  # A save failed and was reported: closing must not report it again.

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
    self._wait_in_flight()  # The previous save's failure is reported as its own step's.
    self._in_flight = step
    with self._reported(step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)), **kwargs)

  def _wait_in_flight(self) -> None:
    if self._in_flight is not None:
      with self._reported(self._in_flight):
        self._manager.wait_until_finished()
      self._in_flight = None

  @contextlib.contextmanager
  def _reported(self, step: int):
    """A failed write of `step` (full disk, read-only or vanished folder) becomes WriteFailed
    naming the step's folder, once its temporary folder is removed; other errors pass."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 -- only write failures are turned; the rest re-raised.
      code = writers.write_errno(e)
      if code is None:
        raise
      self._failed, self._in_flight = True, None
      self._remove_temporary(step)
      raise writers.WriteFailed(paths.join(self.directory, str(step)), code) from e

  def _remove_temporary(self, step: int) -> None:
    """Removes the temporary folder orbax was writing `step` into (it created it for this save,
    replacing any leftover of that step), and nothing else; process 0 only, as orbax writes it
    there. The save's other array writes may still be running when the first one failed (and
    tensorstore creates the folders a file it writes needs): the folder is removed until it
    stays away for 0.2 s, or 5 s have passed."""
    if jax.process_index() != 0:
      return
    tmp = epath.Path(self.directory) / f'{step}{TMP_SUFFIX}'
    if paths.is_url(self.directory):
      with contextlib.suppress(OSError):
        tmp.rmtree(missing_ok=True)
      return
    absent_since, deadline = None, time.monotonic() + 5.0
    while time.monotonic() < deadline:
      if os.path.isdir(tmp) and not os.path.islink(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        absent_since = None
      elif absent_since is None:
        absent_since = time.monotonic()
      elif time.monotonic() - absent_since >= 0.2:
        return
      time.sleep(0.02)

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
    """Waits for the save in flight.

    Raises:
      writers.WriteFailed: it failed to write (its temporary folder removed).
    """
    self._wait_in_flight()

  def close(self) -> None:
    """Waits for the save in flight and closes orbax's manager; after a reported failure,
    quietly (orbax may raise the same failure again).

    Raises:
      writers.WriteFailed: the save in flight failed to write.
    """
    try:
      if not self._failed:
        self._wait_in_flight()
    finally:
      with contextlib.suppress(Exception) if self._failed else contextlib.nullcontext():
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
