"""train_and_evaluate(config, workdir): the training loop, in phases (setup, restore, loop, finish)."""
import logging
import os
import tempfile
import time
from typing import Any, Dict

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from segae_jax import data
from segae_jax.data import augment
from segae_jax.errors import Preempted, TrainingDiverged, UserInputError
from segae_jax.training import checkpoints, optimizers, parallel, validation, visualise, writers
from segae_jax.training.checkpoints import restore_latest_intact
from segae_jax.training.signals import StopSignals
from segae_jax.training.step import (build_model, create_train_state, evaluate, evaluation_key,
                                     flat_scalars, model_variables, run_keys, step_functions)

log = logging.getLogger(__name__)


def _check_workdir_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UserInputError(f'workdir {workdir} is not writable: {e.strerror}') from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains config.model on config.data, evaluating, logging and checkpointing into `workdir`.

  Resumes from the newest intact checkpoint in `workdir` if there is one (damaged newer ones are
  moved to checkpoints.damaged/). Writes config.json,
  metrics.jsonl, TensorBoard events, checkpoints/ (and checkpoints_best/ with
  config.best_metric), picture grids (reconstructions.png and samples.png for autoencoders,
  segmentation.png for segmentation models) and results.json (final test metrics).

  Returns:
    The contents of results.json.

  Raises:
    UserInputError: invalid config, missing data, an unwritable workdir, a workdir holding a
      checkpoint of another model, or checkpoints none of which reads back whole.
    TrainingDiverged: a non-finite loss, loss term or gradient with config.nonfinite='stop'
      (the state of that step is never checkpointed).
    Preempted: SIGTERM or SIGINT arrived; the current step was checkpointed and the save
      finished, so re-running resumes there.
  """
  validation.validate_config(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  _check_workdir_writable(workdir)
  is_main = jax.process_index() == 0

  dataset = data.build(config.data)
  if config.labeled_fraction < 1.0:
    dataset = data.with_labeled_fraction(dataset, config.labeled_fraction, config.seed)
  # Under pmap, BatchNorm averages its batch statistics over the devices' shards.
  model = build_model(config, dataset.image_shape, dataset.num_classes,
                      parallel.norm_axis_name(config.parallel))
  strategy = parallel.make_strategy(config.parallel, *step_functions(config))
  _, schedule = optimizers.make_optimizer(config)

  init_rng, run_rng = run_keys(config.seed)
  state = create_train_state(config, model, dataset.image_shape, init_rng)
  train_iter = data.TrainIterator(
      dataset.train, config.batch_size, config.seed,
      augment.with_augmentation(dataset.preprocess, config.data.get('augment', {})),
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_local_devices=strategy.batch_device_axis)

  # What a checkpoint is of; a workdir holding another model's checkpoint is refused, untouched.
  meta = {'model': config.model.to_dict(), 'dataset': config.data.name,
          'image_shape': list(dataset.image_shape), 'num_classes': dataset.num_classes,
          'class_names': list(dataset.class_names)}
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'), config.max_to_keep)
  # Segmentation runs also keep the checkpoint with the best test mIoU, apart from the latest ones
  # (one orbax manager cannot keep both without dropping the newest step).
  best_ckpt = None
  if config.best_metric:
    best_ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints_best'), 1,
                                         best_metric=config.best_metric)
  start_step, skipped = 0, 0
  restored = restore_latest_intact(ckpt, meta, {'train_state': state, 'rng': run_rng},
                                   strategy.restore_sharding())
  if restored is not None:
    (tree, data_state), start_step = restored
    state, run_rng = tree['train_state'], tree['rng']
    data_state = dict(data_state)
    skipped = int(data_state.pop('skipped_steps', 0))
    train_iter.set_state(data_state)
    log.info('Resumed from %s at step %d.', ckpt.directory, start_step)

  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  writer = writers.MetricWriter(workdir, enabled=is_main)
  state = strategy.replicate(state)
  eval_rng = evaluation_key(config.seed)
  saved_step = start_step if restored is not None else None

  def save(manager, step, metrics=None):
    # The key as host numpy: a single-device array cannot be saved by a multi-process run.
    manager.save(step, {'train_state': strategy.checkpoint_state(state),
                        'rng': np.asarray(jax.device_get(run_rng))},
                 {**train_iter.get_state(), 'skipped_steps': skipped}, meta, metrics)

  step = start_step
  pending = []  # (step, device-side metrics): fetched at log/save steps, so steps are not synchronised.
  window = []   # Host metrics of the finite steps since the last log line.

  def drain():
    """Fetches the pending step metrics; a non-finite step stops the run (config.nonfinite =
    'stop') before anything after it is saved, or is counted as skipped ('skip')."""
    nonlocal skipped
    for at, device_metrics in pending:
      values = strategy.scalars(device_metrics)
      if values.pop('nonfinite') > 0:
        if config.nonfinite == 'stop':
          bad = ', '.join(f'{k}={v}' for k, v in values.items() if not np.isfinite(v))
          kept = (f'the newest checkpoint, {ckpt.directory}/{saved_step}, is the last good state'
                  if saved_step is not None else 'no checkpoint had been written yet')
          raise TrainingDiverged(
              f'train step {at} went non-finite ({bad}); that state was not checkpointed and '
              f'{kept}. Lower config.learning_rate, set config.grad_clip_norm, or use '
              'config.nonfinite=skip')
        skipped += 1
      else:
        window.append(values)
    pending.clear()

  window_start, window_images = time.perf_counter(), 0
  train_time, train_images = 0.0, 0
  eval_metrics: Dict[str, float] = {}
  bar = tqdm(total=config.num_train_steps, initial=start_step, disable=not is_main,
             mininterval=2.0, desc='train', unit='step', dynamic_ncols=True)
  try:
    with StopSignals() as signals:
      while step < config.num_train_steps:
        batch = strategy.put_batch(next(train_iter))
        state, step_metrics = strategy.train_step(state, batch, run_rng)
        if strategy.sync_each_step:
          jax.block_until_ready(step_metrics)
        step += 1
        pending.append((step, step_metrics))
        window_images += config.batch_size
        bar.update(1)
        if step == start_step + 1:
          # Leave compilation out of throughput figures (its metrics are still checked).
          drain()
          window_start, window_images = time.perf_counter(), 0
          window.clear()
        is_last = step == config.num_train_steps
        if step % config.log_every_steps == 0 or is_last:
          drain()
          elapsed = time.perf_counter() - window_start
          scalars = {f'train/{k}': float(np.mean([m[k] for m in window])) for k in
                     (window[0] if window else {})}
          scalars['train/learning_rate'] = float(schedule(step - 1))
          if elapsed > 0 and window_images:
            scalars['train/images_per_s'] = window_images / elapsed
            train_time, train_images = train_time + elapsed, train_images + window_images
          if config.nonfinite == 'skip':
            scalars['train/skipped_steps'] = skipped
          writer.write_scalars(step, scalars)
          if 'train/loss' in scalars and 'train/images_per_s' in scalars:
            bar.set_postfix(loss=f'{scalars["train/loss"]:.2f}',
                            img_s=f'{scalars["train/images_per_s"]:.0f}', refresh=False)
          window.clear()
          window_start, window_images = time.perf_counter(), 0
        if step % config.eval_every_steps == 0 or is_last:
          drain()
          eval_metrics = evaluate(strategy, state, dataset, config, eval_rng)
          writer.write_scalars(step, flat_scalars(eval_metrics, 'test'))
          log.info('step %d test %s', step, ' '.join(
              f'{k}={v:.4g}' for k, v in eval_metrics.items() if k != 'per_class'))
          if best_ckpt is not None:
            save(best_ckpt, step, eval_metrics)
          window_start = time.perf_counter()  # Evaluation is not training time.
        if step % config.checkpoint_every_steps == 0 or is_last:
          drain()
          save(ckpt, step)
          saved_step = step
        reason = signals.requested()
        if reason and not is_last:
          drain()
          if saved_step != step:
            save(ckpt, step)
          # The except clause below closes the checkpointers, which waits for this save.
          message = (f'{reason} at step {step} of {config.num_train_steps}: checkpoint '
                     f'{ckpt.directory}/{step} written; re-run the same command to resume')
          log.warning('Preempted: %s', message)
          raise Preempted(message)
  except BaseException:
    # Stopped (divergence, preemption, a bug): saves already started finish, so the newest
    # checkpoint is whole.
    bar.close()
    for manager in (ckpt, best_ckpt):
      if manager is not None:
        manager.close()
    writer.close()
    raise
  bar.close()

  if not eval_metrics:  # Resumed a finished run: evaluate what was restored.
    eval_metrics = evaluate(strategy, state, dataset, config, eval_rng)
  host_state = strategy.fetch(state)
  host_params = host_state.params
  results = {
      'step': step,
      'resumed_from_step': start_step or None,
      'model': config.model.name,
      'dataset': config.data.name,
      'parallel': strategy.name,
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count(),
      'test': eval_metrics,
      'train_images_per_s': train_images / train_time if train_time else None,
      'train_time_s': train_time,
      'num_params': int(sum(np.size(p) for p in jax.tree.leaves(host_params))),
  }
  if config.nonfinite == 'skip':
    results['skipped_steps'] = skipped
  if is_main:
    pictures_batch = next(data.eval_batches(dataset.test, config.num_pictures, dataset.preprocess,
                                            seed=config.seed))
    visualise.write_pictures(model, model_variables(host_state), pictures_batch, eval_rng,
                             workdir, writer, step, num_samples=2 * config.num_pictures)
    writers.write_json(os.path.join(workdir, 'results.json'), results)
  ckpt.close()
  if best_ckpt is not None:
    best_ckpt.close()
  writer.close()
  return results
