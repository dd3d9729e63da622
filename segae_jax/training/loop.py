"""train_and_evaluate(config, workdir): the training loop, in phases (setup, restore, train,
finish)."""
import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
from etils import epath
from tqdm import tqdm

from segae_jax import data, models
from segae_jax.errors import Preempted, TrainingDiverged, UserInputError
from segae_jax.inference import scoring
from segae_jax.inference.model import build_model
from segae_jax.training import (checkpoints, distributed, objectives, optimizers, parallel,
                                paths, pretrained, validation, visualise, writers)
from segae_jax.training import metrics as metrics_lib
from segae_jax.training.prefetch import DevicePrefetcher
from segae_jax.training.signals import StopSignals
from segae_jax.training.state import create_train_state
from segae_jax.training.evaluation import evaluate
from segae_jax.training.metrics import flat_scalars
from segae_jax.training.step import evaluation_key, run_keys, step_functions

log = logging.getLogger(__name__)


def check_workdir_writable(workdir: str) -> None:
  """Creates `workdir` (a local folder or a URL) and writes and removes a file in it."""
  probe = epath.Path(workdir) / f'.write_check.{os.getpid()}'
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:  # Local and fsspec file systems raise OSError subclasses.
    raise UserInputError(f'workdir {workdir} is not writable: {e.strerror or e}') from None


def every(n: int, last: int) -> Callable[[int], bool]:
  """A predicate true at every n-th step and at the last one (log, evaluate, checkpoint)."""
  return lambda step: step % n == 0 or step == last


class MetricsWindow:
  """The train steps since the last log line.

  Their metrics stay on the devices until `drain` (fetching each step would synchronise host and
  devices every step); drained, a non-finite step stops the run (config.nonfinite='stop') before
  anything after it is saved, or is counted in `skipped` ('skip'). `close` gives the window's
  mean scalars and throughput (images/s, wall clock; the fraction of it spent waiting for input
  batches) and starts the next window; `train_time` (seconds), `train_images` and `data_wait`
  (seconds) add up the closed windows.
  """

  def __init__(self, strategy, nonfinite: str, skipped: int, last_good: Callable[[], str]):
    self._strategy, self._nonfinite, self._last_good = strategy, nonfinite, last_good
    self.skipped = skipped
    self.train_time, self.train_images, self.data_wait = 0.0, 0, 0.0
    self._pending: List[Tuple[int, Any]] = []
    self._values: List[Dict[str, float]] = []
    self.restart()

  def restart(self) -> None:
    """Forgets the finite steps seen so far (e.g. the compiling first step) and restarts the
    clock."""
    self._values.clear()
    self._start, self._images, self._data_wait = time.perf_counter(), 0, 0.0

  def restart_clock(self) -> None:
    """Evaluation and checkpoint waits are not training time."""
    self._start = time.perf_counter()

  def add(self, step: int, device_metrics, images: int, data_wait: float = 0.0) -> None:
    """One step's metrics (on the devices), its images and the seconds its batch was waited for."""
    self._pending.append((step, device_metrics))
    self._images += images
    self._data_wait += data_wait

  def drain(self) -> None:
    """Fetches the pending step metrics.

    Raises:
      TrainingDiverged: a non-finite step under config.nonfinite='stop'.
    """
    for at, device_metrics in self._pending:
      values = self._strategy.scalars(device_metrics)
      if values.pop('nonfinite') <= 0:
        self._values.append(values)
      elif self._nonfinite == 'stop':
        bad = ', '.join(f'{k}={v}' for k, v in values.items() if not np.isfinite(v))
        raise TrainingDiverged(
            f'train step {at} went non-finite ({bad}); that state was not checkpointed and '
            f'{self._last_good()}. Lower config.learning_rate, set config.grad_clip_norm, or '
            'use config.nonfinite=skip')
      else:
        self.skipped += 1
    self._pending.clear()

  def close(self, learning_rate: float) -> Dict[str, float]:
    """Drains, then {'train/<metric>': mean over the window's finite steps,
    'train/learning_rate', 'train/images_per_s', 'train/data_wait_fraction',
    ('train/skipped_steps')}; starts a new window."""
    self.drain()
    elapsed = time.perf_counter() - self._start
    scalars = {f'train/{k}': float(np.mean([m[k] for m in self._values]))
               for k in (self._values[0] if self._values else {})}
    scalars['train/learning_rate'] = learning_rate
    if elapsed > 0 and self._images:
      scalars['train/images_per_s'] = self._images / elapsed
      scalars['train/data_wait_fraction'] = min(1.0, self._data_wait / elapsed)
      self.train_time += elapsed
      self.train_images += self._images
      self.data_wait += self._data_wait
    if self._nonfinite == 'skip':
      scalars['train/skipped_steps'] = self.skipped
    self.restart()
    return scalars


class RunCheckpoints:
  """The run's checkpoint directories: checkpoints/ (the newest config.max_to_keep) and, with
  config.best_metric, checkpoints_best/ (the best evaluation; one orbax manager cannot keep both
  without dropping the newest step). Closed by `stack`, which waits for saves in flight, also
  when the run stops with an error, so the newest checkpoint is always whole."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, meta: Mapping[str, Any],
               strategy, stack: contextlib.ExitStack):
    self._meta, self._strategy = meta, strategy
    self.latest = checkpoints.Checkpointer(paths.join(workdir, 'checkpoints'),
                                           config.max_to_keep)
    stack.callback(self.latest.close)
    self.best = None
    if config.best_metric:
      self.best = checkpoints.Checkpointer(paths.join(workdir, 'checkpoints_best'), 1,
                                           best_metric=config.best_metric)
      stack.callback(self.best.close)
    self.saved_step: Optional[int] = None

  def restore(self, target):
    """((state tree, data state), step) of the newest intact checkpoint, or None."""
    restored = checkpoints.restore_latest_intact(self.latest, self._meta, target,
                                                 self._strategy.restore_sharding())
    if restored is not None:
      self.saved_step = restored[1]
    return restored

  def save(self, step: int, state, run_rng, data_state, metrics=None) -> None:
    """Saves into checkpoints_best/ when `metrics` (an evaluation) is given, else checkpoints/."""
    manager = self.latest if metrics is None else self.best
    # The key as host numpy: a single-device array cannot be saved by a multi-process run.
    manager.save(step, {'train_state': self._strategy.checkpoint_state(state),
                        'rng': np.asarray(jax.device_get(run_rng))},
                 data_state, dict(self._meta), metrics)
    if metrics is None:
      self.saved_step = step

  def wait_until_finished(self) -> None:
    """Waits for the saves in flight.

    Raises:
      writers.WriteFailed: one failed to write (full disk, read-only or removed folder).
    """
    for manager in (self.latest, self.best):
      if manager is not None:
        manager.wait_until_finished()

  def last_good(self) -> str:
    if self.saved_step is None:
      return 'no checkpoint had been written yet'
    return (f'the newest checkpoint, {self.latest.directory}/{self.saved_step}, is the last good '
            'state')


@dataclasses.dataclass
class RunSetup:
  """What a run is built from, before any checkpoint is read: the dataset, the model, the
  objective (the training method), the data-parallel strategy with the compiled steps, the
  learning-rate schedule, the initial state and run key, the training inputs, and `meta` (what a
  checkpoint is of: a workdir holding another model's, dataset's or objective's checkpoint is
  refused untouched)."""
  dataset: data.Dataset
  model: Any
  objective: objectives.Objective
  strategy: Any
  schedule: Callable[[int], float]
  state: Any
  run_rng: jax.Array
  train_iter: data.TrainIterator
  meta: Dict[str, Any]
  # The test split's segmentation scores at native resolution (inference.scoring.NativeScorer), for
  # a segmentation model whose test images are larger than its input; None otherwise.
  native_scores: Optional[Callable[[Any], Dict[str, Any]]] = None


def setup(config: ml_collections.ConfigDict, objective: objectives.Objective,
          source=None) -> RunSetup:
  """Builds the dataset, model, strategy, initial state and training inputs of `config` with
  its `objective` (validation.validate_run's, told the dataset's image size here); the initial
  state starts from the parameters of `source` (pretrained.check_source of config.init_from: a
  fresh run that has one) when given."""
  # Prepared once, by process 0, into what may be a shared tfds_dir; the others then read it.
  dataset = distributed.process_0_first(lambda: data.run_dataset(config))
  # Under pmap, BatchNorm averages its batch statistics over the devices' shards.
  model = build_model(config, dataset.image_shape, dataset.num_classes,
                      parallel.norm_axis_name(config.parallel))
  objective.set_image_size(dataset.image_shape[:2])
  objective.set_model(model)
  strategy = parallel.make_strategy(config.parallel, *step_functions(config, objective))
  _, schedule = optimizers.make_optimizer(config)
  init_rng, run_rng = run_keys(config.seed)
  state = create_train_state(config, model, dataset.image_shape, init_rng)
  if source is not None:
    state = pretrained.init_from(config, state, source)
  state = objective.init_state(state)
  train_iter = data.train_inputs(config, dataset, objective.views(), strategy.device_axis_size,
                                 jax.process_index(), jax.process_count())
  meta = {'model': config.model.to_dict(), 'dataset': config.data.name,
          'image_shape': list(dataset.image_shape), 'num_classes': dataset.num_classes,
          'class_names': list(dataset.class_names),
          'objective': config.get('objective', 'supervised'),  # As named (an alias as such).
          'objective_state': sorted(getattr(state, 'objective_state', None) or {}),
          # How stored pixels become the input: predict, evaluate and export apply it too.
          'normalization': dataset.normalization.to_dict()}
  native_scores = None
  if models.segments(config.model.name) and scoring.has_larger_images(dataset, 'test'):
    native_scores = scoring.NativeScorer(config, dataset)
  return RunSetup(dataset=dataset, model=model, objective=objective, strategy=strategy,
                  schedule=schedule, state=state, run_rng=run_rng, train_iter=train_iter,
                  meta=meta, native_scores=native_scores)


def _restore(config, run: RunSetup, ckpts: RunCheckpoints) -> Tuple[Any, jax.Array, int, int]:
  """(state, run key, start step, skipped steps): from the newest intact checkpoint (the
  training iterator set to its position, unless the run has no step left to train), or the
  initial ones."""
  restored = ckpts.restore({'train_state': run.state, 'rng': run.run_rng})
  if restored is None:
    return run.state, run.run_rng, 0, 0
  (tree, data_state), start_step = restored
  data_state = dict(data_state)
  skipped = int(data_state.pop('skipped_steps', 0))
  if start_step < config.num_train_steps:  # A finished run draws no batch: any state will do.
    run.train_iter.set_state(data_state)
  log.info('Resumed from %s at step %d.', ckpts.latest.directory, start_step)
  return tree['train_state'], tree['rng'], start_step, skipped


def test_metrics(config, run: RunSetup, state) -> Dict[str, Any]:
  """The test split's metrics: eval_step's over the split at the input size; for a segmentation
  model whose test images are larger than its input (a folder stored at native size, which the
  input size would show only as a centre window or shrunk) the segmentation scores are replaced
  by those at native resolution (run.native_scores); the loss terms stay those at the input
  size."""
  metrics = evaluate(run.strategy, state, run.dataset, config, evaluation_key(config.seed))
  if 'miou' in metrics and run.native_scores is not None:
    metrics.update(run.native_scores(run.objective.eval_variables(run.strategy.fetch(state))))
  return metrics


def _evaluate(config, run: RunSetup, state, writer: writers.MetricWriter, step: int):
  metrics = test_metrics(config, run, state)
  writer.write_scalars(step, flat_scalars(metrics, 'test'))
  log.info('step %d test %s', step, metrics_lib.summary_text(metrics, list(config.loss.keys())))
  return metrics


def _train(config, run: RunSetup, state, run_rng, start_step: int, ckpts: RunCheckpoints,
           window: MetricsWindow, writer: writers.MetricWriter):
  """Steps start_step + 1 .. config.num_train_steps with periodic logging, evaluation and
  checkpoints; returns (state, the last evaluation's metrics, or {} if no step ran).

  Raises:
    TrainingDiverged: see MetricsWindow.drain.
    Preempted: SIGTERM/SIGINT arrived; the step it arrived at was checkpointed first.
  """
  last = config.num_train_steps
  log_now, eval_now, save_now = (every(n, last) for n in (
      config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps))
  batches = DevicePrefetcher(run.train_iter, run.strategy.put_batch)
  data_state = lambda: {**batches.get_state(), 'skipped_steps': window.skipped}
  eval_metrics: Dict[str, Any] = {}
  bar = tqdm(total=last, initial=start_step, disable=jax.process_index() != 0,
             mininterval=2.0, desc='train', unit='step', dynamic_ncols=True)
  with bar, StopSignals() as signals:
    for step in range(start_step + 1, last + 1):
      waited = time.perf_counter()
      batch = next(batches)
      waited = time.perf_counter() - waited
      state, step_metrics = run.strategy.train_step(state, batch, run_rng)
      if run.strategy.sync_each_step:
        jax.block_until_ready(step_metrics)
      window.add(step, step_metrics, config.batch_size, waited)
      bar.update(1)
      if step == start_step + 1:
        # Leave compilation out of throughput figures (its metrics are still checked).
        window.drain()
        window.restart()
      if log_now(step):
        scalars = window.close(float(run.schedule(step - 1)))
        writer.write_scalars(step, scalars)
        if 'train/loss' in scalars and 'train/images_per_s' in scalars:
          bar.set_postfix(loss=f'{scalars["train/loss"]:.2f}',
                          img_s=f'{scalars["train/images_per_s"]:.0f}', refresh=False)
      if eval_now(step):
        window.drain()
        eval_metrics = _evaluate(config, run, state, writer, step)
        if ckpts.best is not None:
          ckpts.save(step, state, run_rng, data_state(), eval_metrics)
        window.restart_clock()
      if save_now(step):
        window.drain()
        ckpts.save(step, state, run_rng, data_state())
      reason = signals.requested(step)
      if reason and step != last:
        window.drain()
        if ckpts.saved_step != step:
          ckpts.save(step, state, run_rng, data_state())
        # Leaving the ExitStack closes the checkpointers, which waits for this save.
        message = (f'{reason} at step {step} of {last}: checkpoint {ckpts.latest.directory}/'
                   f'{step} written; re-run the same command to resume')
        log.warning('Preempted: %s', message)
        raise Preempted(message)
  # The last checkpoint whole (or its failure reported) before results.json says the run ended.
  ckpts.wait_until_finished()
  return state, eval_metrics


def _finish(config, workdir: str, run: RunSetup, state, start_step: int, eval_metrics,
            window: MetricsWindow, writer: writers.MetricWriter) -> Dict[str, Any]:
  """results.json (returned) and the picture grids, from the trained state."""
  step = max(start_step, config.num_train_steps)
  if not eval_metrics:  # Resumed a finished run: evaluate what was restored.
    eval_metrics = test_metrics(config, run, state)
  host_state = run.strategy.fetch(state)
  results = {
      'step': step,
      'resumed_from_step': start_step or None,
      'model': config.model.name,
      'dataset': config.data.name,
      'parallel': run.strategy.name,
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count(),
      'test': eval_metrics,
      # Where the segmentation scores were counted: 'native' (tiled at each test image's own
      # size) or 'input' (at config.data.image_size).
      'test_resolution': ('native' if 'miou' in eval_metrics and run.native_scores is not None
                          else 'input'),
      'train_images_per_s': (window.train_images / window.train_time if window.train_time
                             else None),
      'data_wait_fraction': (window.data_wait / window.train_time if window.train_time
                             else None),
      'train_time_s': window.train_time,
      'num_params': int(sum(np.size(p) for p in jax.tree.leaves(host_state.params))),
  }
  if config.nonfinite == 'skip':
    results['skipped_steps'] = window.skipped
  if jax.process_index() == 0:
    pictures_batch = next(data.eval_batches(run.dataset.test, config.num_pictures,
                                            run.dataset.preprocess, seed=config.seed))
    visualise.write_pictures(run.model, run.objective.eval_variables(host_state), pictures_batch,
                             evaluation_key(config.seed), workdir, writer, step,
                             num_samples=2 * config.num_pictures)
    writers.write_json(paths.join(workdir, 'results.json'), results)
  return results


@contextlib.contextmanager
def _resume_hint(workdir: str):
  """A failed write (writers.WriteFailed: full disk, read-only or vanished folder) ends with what
  to do: fix it and re-run the same command, which resumes from the newest whole checkpoint."""
  try:
    yield
  except writers.WriteFailed as e:
    steps = checkpoints.steps_in(paths.join(workdir, 'checkpoints'))
    then = f'resume from step {steps[-1]}' if steps else 'start again'
    raise e.with_hint(f'{e.remedy()} and re-run the same command to {then}') from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains config.model on config.data, evaluating, logging and checkpointing into `workdir`.

  Resumes from the newest intact checkpoint in `workdir` if there is one (damaged newer ones are
  moved to checkpoints.damaged/). Writes config.json, metrics.jsonl, TensorBoard events,
  checkpoints/ (and checkpoints_best/ with config.best_metric), picture grids
  (reconstructions.png and samples.png for autoencoders, segmentation.png for segmentation
  models) and results.json (final test metrics).

  Returns:
    The contents of results.json.

  Raises:
    UserInputError: invalid config, missing data, an unwritable workdir, a failed write
      (writers.WriteFailed: full disk, read-only or removed folder; its temporary files removed,
      the message says from which step a re-run resumes), a workdir holding a
      checkpoint of another model, checkpoints none of which reads back whole, or a fresh run's
      config.init_from that it cannot start from (training.pretrained).
    TrainingDiverged: a non-finite loss, loss term or gradient with config.nonfinite='stop'
      (the state of that step is never checkpointed).
    Preempted: SIGTERM or SIGINT arrived; the current step was checkpointed and the save
      finished, so re-running resumes there.
  """
  config, objective = validation.validate_run(config)  # Values left to the data filled in.
  workdir = paths.resolve(workdir)
  source = None
  if config.get('init_from', '') and not checkpoints.steps_in(paths.join(workdir, 'checkpoints')):
    source = pretrained.check_source(config)  # A fresh run: checked before anything is built.
  check_workdir_writable(workdir)
  run = setup(config, objective, source)
  # Closes writer and checkpointers however the run ends; then a failed write gets its hint.
  with _resume_hint(workdir), contextlib.ExitStack() as stack:
    stack.callback(run.train_iter.close)  # The input worker processes, if any.
    ckpts = RunCheckpoints(workdir, config, run.meta, run.strategy, stack)
    state, run_rng, start_step, skipped = _restore(config, run, ckpts)
    if jax.process_index() == 0:
      writers.write_text(paths.join(workdir, 'config.json'),
                         config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
    # Resumed: metrics.jsonl keeps the steps up to the checkpoint's (later ones train again).
    writer = writers.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                  resumed_step=start_step)
    stack.callback(writer.close)
    window = MetricsWindow(run.strategy, config.nonfinite, skipped, ckpts.last_good)
    state, eval_metrics = _train(config, run, run.strategy.replicate(state), run_rng, start_step,
                                 ckpts, window, writer)
    return _finish(config, workdir, run, state, start_step, eval_metrics, window, writer)
