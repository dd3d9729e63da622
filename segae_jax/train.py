"""Training: TrainState, pure train_step / eval_step, and train_and_evaluate(config, workdir).

Reads top to bottom like the flax examples: create_train_state, train_step, eval_step, evaluate,
train_and_evaluate. The step functions are pure; the data-parallel strategy (segae_jax.parallel)
compiles them with pmap or sharded jit.
"""
import functools
import logging
import os
import signal
import tempfile
import threading
import time
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.training import train_state
from tqdm import tqdm

from segae_jax import checkpoints, data, losses, metrics as metrics_lib, models, optimizers
from segae_jax import parallel, validation, visualise, writers
from segae_jax.data import augment
from segae_jax.errors import Preempted, TrainingDiverged, UserInputError

log = logging.getLogger(__name__)


class TrainState(train_state.TrainState):
  """flax TrainState (step, params, opt_state, apply_fn, tx) plus BatchNorm statistics
  (`batch_stats`, an empty dict for models without BatchNorm)."""
  batch_stats: Any = None


def create_train_state(config: ml_collections.ConfigDict, model, image_shape,
                       rng: jax.Array) -> TrainState:
  """Initialises parameters on a dummy batch [1, height, width, channels] and the optimizer."""
  params_rng, reparam_rng = jax.random.split(rng)
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {'params': params_rng, 'reparam': reparam_rng, 'dropout': reparam_rng}, dummy)
  tx, _ = optimizers.make_optimizer(config)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


def model_variables(state: TrainState, params=None) -> Dict[str, Any]:
  """The variables to `model.apply`: {'params': params (default state.params)} plus
  'batch_stats' when the model has BatchNorm."""
  variables = {'params': state.params if params is None else params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def _step_rngs(rng: jax.Array, step, axis_name: Optional[str]) -> Dict[str, jax.Array]:
  # Randomness is a function of (run key, step[, device]), so a resumed run draws what an
  # uninterrupted one would have drawn.
  rng = jax.random.fold_in(rng, step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  reparam, dropout = jax.random.split(rng)
  return {'reparam': reparam, 'dropout': dropout}


def _float32(outputs: Mapping[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
  # Losses and metrics in float32 whatever the model's compute dtype (mixed precision).
  return {k: v.astype(jnp.float32) for k, v in outputs.items()}


def loss_scale_for(config: ml_collections.ConfigDict) -> float:
  """config.loss_scale for float16 training, 1 otherwise (bfloat16 has float32's range)."""
  return float(config.loss_scale) if config.get('compute_dtype') == 'float16' else 1.0


def run_keys(seed: int):
  """(init_rng, run_rng) of a run with config.seed = `seed`: init_rng initialises the parameters,
  run_rng (saved in every checkpoint) seeds each train step."""
  return tuple(jax.random.split(jax.random.PRNGKey(seed)))


def evaluation_key(seed: int) -> jax.Array:
  """The PRNG key of every evaluation of a run (the VAE's sampled latents): training and
  `segae_jax.evaluate` both call this, so the evaluation of a restored run reproduces the run's
  own test metrics."""
  return jax.random.fold_in(run_keys(seed)[1], 2**31 - 1)


def build_model(config: ml_collections.ConfigDict, image_shape, num_classes: Optional[int] = None,
                norm_axis_name: Optional[str] = None):
  """The model train_and_evaluate trains: config.model for images of `image_shape` (height,
  width, channels) and `num_classes` classes, in config.compute_dtype with config.conv_impl;
  `norm_axis_name` as in models.build. Restoring a run (segae_jax.inference) builds it here too."""
  return models.build(config.model, image_shape, num_classes=num_classes,
                      norm_axis_name=norm_axis_name,
                      dtype=jnp.dtype(config.get('compute_dtype', 'float32')),
                      conv_impl=config.get('conv_impl', 'auto'))


def step_functions(config: ml_collections.ConfigDict):
  """(train_step, eval_step) bound to config's loss and loss scale, not yet compiled."""
  loss_fn = losses.make_loss_fn(config.loss, config.get('loss_params'))
  return (functools.partial(train_step, loss_fn=loss_fn, loss_scale=loss_scale_for(config)),
          functools.partial(eval_step, loss_fn=loss_fn))


def train_step(state: TrainState, batch: Mapping[str, jnp.ndarray], rng: jax.Array, *,
               loss_fn: losses.LossFn, axis_name: Optional[str] = None,
               loss_scale: float = 1.0):
  """One optimisation step on `batch` (pure).

  Args:
    state: the TrainState.
    batch: {'image': float32 [batch, height, width, channels] in [0, 1], ...}.
    rng: the run's PRNG key; the step's key is derived from it and state.step.
    loss_fn: (outputs, batch) -> (scalar, metrics), e.g. losses.make_loss_fn(config.loss).
    axis_name: the pmap axis to average gradients and metrics over, or None.
    loss_scale: the loss is multiplied by this before differentiation and the gradients divided
      by it (static loss scaling for float16 compute; Micikevicius et al., "Mixed Precision
      Training", ICLR 2018, Sec. 3.2). 1 for float32/bfloat16.

  Returns:
    (new state, metrics: {'loss', each loss term, 'grad_norm', 'nonfinite'} float32 scalars).
    'nonfinite' is 1 when the loss, a term or the gradient norm is NaN or infinite; the new state
    then keeps the old parameters, optimizer state and BatchNorm statistics (only the step
    advances), so no non-finite value enters the state whatever config.nonfinite decides.
  """
  rngs = _step_rngs(rng, state.step, axis_name)

  def compute_loss(params):
    if state.batch_stats:
      # BatchNorm: batch statistics in training mode (averaged over devices inside the model
      # when it was built with norm_axis_name), running averages updated.
      outputs, updates = state.apply_fn(model_variables(state, params), batch['image'], train=True,
                                        rngs=rngs, mutable=['batch_stats'])
    else:
      outputs, updates = state.apply_fn({'params': params}, batch['image'], train=True,
                                        rngs=rngs), {}
    loss, step_metrics = loss_fn(_float32(outputs), batch)
    return loss * loss_scale, (step_metrics, updates)

  (_, (step_metrics, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params)
  if loss_scale != 1.0:
    grads = jax.tree.map(lambda g: g / loss_scale, grads)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    step_metrics = jax.lax.pmean(step_metrics, axis_name)
  step_metrics['grad_norm'] = jnp.sqrt(sum(jnp.sum(jnp.square(g))
                                           for g in jax.tree.leaves(grads)))
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in step_metrics.values()]))
  new_state = state.apply_gradients(grads=grads)
  if updates:
    new_state = new_state.replace(batch_stats=updates['batch_stats'])
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = new_state.replace(params=keep(new_state.params, state.params),
                                opt_state=keep(new_state.opt_state, state.opt_state),
                                batch_stats=keep(new_state.batch_stats, state.batch_stats))
  step_metrics['nonfinite'] = 1.0 - finite.astype(jnp.float32)
  return new_state, step_metrics


def eval_step(state: TrainState, batch: Mapping[str, jnp.ndarray], rng: jax.Array, *,
              loss_fn: losses.LossFn, axis_name: Optional[str] = None) -> Dict[str, jnp.ndarray]:
  """Sums over the real examples of `batch` (pure).

  `batch['valid']` (float32 [batch]) marks real examples. Returns {'count': number of real
  examples, name: sum of the per-example metric} for the loss terms (and reconstruction metrics
  when the model reconstructs), plus for segmentation models 'confusion': float32
  [classes, classes] pixel counts C[true, predicted]. Summing over all batches (and devices: psum
  over `axis_name`) gives exact values over the split.
  """
  rngs = _step_rngs(rng, 0, axis_name)
  outputs = _float32(state.apply_fn(model_variables(state), batch['image'],
                                    train=False, rngs=rngs))
  # Every test image counts for evaluation, also when training hid some labels.
  batch = {k: v for k, v in batch.items() if k != 'labeled'}
  _, values = loss_fn(outputs, batch)
  if 'rec_logits' in outputs:
    values.update(metrics_lib.reconstruction_metrics(outputs, batch))
  count = jnp.sum(batch['valid'])
  sums = {k: v * count for k, v in values.items()}
  sums['count'] = count
  if 'seg_logits' in outputs:
    pixel_weights = jnp.broadcast_to(batch['valid'][:, None, None], batch['segmentation'].shape)
    sums['confusion'] = metrics_lib.confusion_matrix(
        batch['segmentation'], jnp.argmax(outputs['seg_logits'], -1),
        outputs['seg_logits'].shape[-1], pixel_weights)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


def evaluate(strategy, state, dataset: data.Dataset, config, rng: jax.Array,
             split: str = 'test') -> Dict[str, Any]:
  """Exact metrics over the whole split: means of eval_step's per-example sums, and for
  segmentation models the scores of the summed confusion matrix (metrics.segmentation_scores:
  'miou', 'mean_dice', 'pixel_accuracy', 'per_class')."""
  totals: Dict[str, np.ndarray] = {}
  source = getattr(dataset, split)
  for batch in data.eval_batches(source, config.eval_batch_size, dataset.preprocess,
                                 seed=config.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count(),
                                 num_local_devices=strategy.batch_device_axis):
    sums = strategy.fetch(strategy.eval_step(state, strategy.put_batch(batch), rng))
    for k, v in sums.items():
      totals[k] = totals[k] + v if k in totals else np.asarray(v, np.float64)
  count = float(totals.pop('count'))
  confusion = totals.pop('confusion', None)
  results: Dict[str, Any] = {k: float(v) / count for k, v in totals.items()}
  if confusion is not None:
    results.update(metrics_lib.segmentation_scores(confusion, dataset.class_names))
  return results


def flat_scalars(metrics: Mapping[str, Any], prefix: str) -> Dict[str, float]:
  """{'miou': .., 'per_class': {'bag': {'iou': ..}}} -> {'test/miou': .., 'test/iou/bag': ..}."""
  out = {}
  for k, v in metrics.items():
    if k == 'per_class':
      for name, values in v.items():
        for metric, value in values.items():
          if metric != 'pixels':
            out[f'{prefix}/{metric}/{name}'] = value
    else:
      out[f'{prefix}/{k}'] = v
  return out


def _check_workdir_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UserInputError(f'workdir {workdir} is not writable: {e.strerror}') from None


class StopSignals:
  """SIGTERM and SIGINT handlers that only note the signal, so the training loop can stop at the
  next step boundary with a checkpoint (a preemption notice gives seconds, not minutes). A second
  signal of the same kind gets the previous handler (e.g. Ctrl-C twice interrupts at once).
  Installed only from the main thread (Python's rule for signal handlers)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    if self.received == signum:
      signal.signal(signum, self._previous[signum])
      signal.raise_signal(signum)
      return
    self.received = signum
    log.warning('Received %s: stopping after this step with a checkpoint.',
                signal.Signals(signum).name)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> Optional[str]:
    """The signal's name once one arrived (in any process of a multi-process run: all of them
    must stop at the same step, or the next collective would wait forever), else None."""
    received = self.received or 0
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      received = int(np.max(multihost_utils.process_allgather(np.int32(received))))
    return signal.Signals(received).name if received else None


def restore_latest_intact(ckpt: checkpoints.Checkpointer, meta: Mapping[str, Any], target,
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
