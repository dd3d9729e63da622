"""train_step, data parallelism, checkpoints and exact resume."""
import functools
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import saved_state, small_config
from segae_jax.training import checkpoints, objectives, optimizers, parallel
from segae_jax import data, losses, models, training
from segae_jax.errors import TrainingDiverged, UserInputError


def _setup(tfds_dir, fashion_mnist, model_name, loss, batch_size=32, **overrides):
  config = small_config(tfds_dir, **{'model.name': model_name, 'batch_size': batch_size,
                                     **overrides})
  config.loss = loss
  model = models.build(config.model, (28, 28, 1))
  state = training.create_train_state(config, model, (28, 28, 1), jax.random.PRNGKey(0))
  loss_fn = losses.make_loss_fn(config.loss)
  batches = [fashion_mnist.preprocess(fashion_mnist.train.__getitems__(np.arange(i, i + batch_size)),
                                      None) for i in range(0, 3 * batch_size, batch_size)]
  return config, model, state, loss_fn, batches


@pytest.mark.parametrize('model_name,loss', [('ae', {'rec_mse': 1.0}),
                                             ('vae', {'rec_bce': 1.0, 'kl': 1.0})])
def test_train_step_lowers_loss_on_fixed_batch(tfds_dir, fashion_mnist, model_name, loss):
  config, model, state, loss_fn, (batch, *_) = _setup(tfds_dir, fashion_mnist, model_name, loss,
                                                      warmup_steps=0, schedule='constant')
  key = jax.random.PRNGKey(5)

  def loss_at(params):  # Same reparameterisation noise before and after.
    out = model.apply({'params': params}, batch['image'], rngs={'reparam': key})
    return float(loss_fn(out, batch)[0])

  before = loss_at(state.params)
  step = jax.jit(functools.partial(training.train_step, objective=objectives.plain(config)))
  new_state, metrics = step(state, batch, key)
  assert int(new_state.step) == 1
  assert set(metrics) >= {'loss', 'grad_norm'} and float(metrics['grad_norm']) > 0
  assert loss_at(new_state.params) < before


def _max_param_difference(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _device_count_or_skip():
  count = jax.device_count()
  if count < 2:
    pytest.skip(f'needs several devices, this platform has {count}: on a CPU run with '
                'XLA_FLAGS=--xla_force_host_platform_device_count=4 (tests/conftest.py)')
  return count


def _split_for(strategy, batch):
  """A global batch as the strategy's pipeline would hand it: [devices, per_device, ...] for
  pmap, unchanged for sharded jit."""
  return data.pipeline.to_devices(batch, strategy.device_axis_size)


def _run_both(config, model_single, model_parallel, state, batches, strategy_name):
  """The same steps on one device and under `strategy_name`; returns (single-device state and
  per-step metrics, the strategy, its state still replicated, its per-step metrics)."""
  step_fns = training.step_functions(config)
  key = jax.random.PRNGKey(1)
  single = jax.jit(step_fns[0])
  single_state, single_metrics = jax.tree.map(jnp.copy, state), []
  for batch in batches:
    single_state, metrics = single(single_state, batch, key)
    single_metrics.append({k: float(v) for k, v in metrics.items()})
  strategy = parallel.make_strategy(strategy_name, *step_fns)
  dp_state = strategy.replicate(state.replace(apply_fn=model_parallel.apply))
  dp_metrics = []
  for batch in batches:
    dp_state, metrics = strategy.train_step(dp_state, strategy.put_batch(_split_for(strategy, batch)),
                                            key)
    dp_metrics.append(strategy.scalars(metrics))
  return single_state, single_metrics, strategy, dp_state, dp_metrics


def _assert_same_steps(single_metrics, dp_metrics):
  """Loss and gradient norm of every step as one device computes them: a psum where pmean
  belongs, or a gradient summed twice, changes grad_norm by the device count."""
  for one, many in zip(single_metrics, dp_metrics):
    for name in ('loss', 'grad_norm'):
      np.testing.assert_allclose(many[name], one[name], rtol=2e-5, err_msg=name)


@pytest.mark.parametrize('strategy_name,model_name,loss', [
    ('pmap', 'ae', {'rec_mse': 1.0}),
    ('jit', 'vae', {'rec_bce': 1.0, 'kl': 1.0}),
])
def test_data_parallel_matches_single_device(tfds_dir, fashion_mnist, strategy_name, model_name,
                                             loss):
  """All devices vs 1 on the same global batches, 3 plain SGD steps (whose update is the
  gradient's scale, unlike Adam's): loss, grad_norm and parameters agree.

  pmap draws per-device noise, so its VAE would differ by design; the AE is deterministic. Sharded
  jit draws the same noise as one device (partitionable threefry), so the VAE must match.
  """
  _device_count_or_skip()
  config, model, state, _, batches = _setup(
      tfds_dir, fashion_mnist, model_name, loss, optimizer='sgd', momentum=0.0,
      schedule='constant', warmup_steps=0, learning_rate=1e-4)
  single_state, single_metrics, strategy, dp_state, dp_metrics = _run_both(
      config, model, model, state, batches, strategy_name)
  _assert_same_steps(single_metrics, dp_metrics)
  dp_state = strategy.unreplicate(dp_state)
  assert int(dp_state.step) == 3
  diff = _max_param_difference(single_state.params, dp_state.params)
  assert diff < 1e-6, diff
  # And the step really moved the parameters (the comparison is not between two no-ops).
  assert _max_param_difference(state.params, dp_state.params) > 1e-4


@pytest.mark.parametrize('strategy_name', ['pmap', 'jit'])
def test_batchnorm_unet_data_parallel_matches_single_device(strategy_name):
  """A U-Net with BatchNorm under each strategy against one device on the global batch: the
  batch statistics are global (pmap averages them over the devices' shards), so parameters,
  running statistics, loss and grad_norm agree, and every replica holds the same statistics.
  On oneDNN's convolutions (the CPU default; the matmul path where the library is absent)."""
  devices = _device_count_or_skip()
  from configs import unet_scenes
  config = unet_scenes.get_config()
  config.update_from_flattened_dict({
      'model.features': (4, 8), 'optimizer': 'sgd', 'momentum': 0.0, 'schedule': 'constant',
      'warmup_steps': 0, 'learning_rate': 0.05, 'batch_size': 4 * devices,
      'conv_impl': 'onednn'})
  shape = (16, 16, 1)
  single_model = training.build_model(config, shape, 3)
  parallel_model = training.build_model(config, shape, 3,  # As train_and_evaluate builds it.
                                        norm_axis_name=parallel.norm_axis_name(strategy_name))
  state = training.create_train_state(config, single_model, shape, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batches = [{'image': rng.random((4 * devices,) + shape, np.float32),
              'segmentation': rng.integers(0, 3, (4 * devices,) + shape[:2]).astype(np.int32)}
             for _ in range(2)]
  single_state, single_metrics, strategy, dp_state, dp_metrics = _run_both(
      config, single_model, parallel_model, state, batches, strategy_name)
  _assert_same_steps(single_metrics, dp_metrics)
  for leaf in jax.tree.leaves(dp_state.batch_stats):  # One copy is checkpointed: all agree.
    copies = ([leaf[d] for d in range(leaf.shape[0])] if strategy_name == 'pmap'
              else [shard.data for shard in leaf.addressable_shards])
    assert len(copies) == devices
    for copy in copies[1:]:
      np.testing.assert_array_equal(np.asarray(copy), np.asarray(copies[0]))
  dp_state = strategy.unreplicate(dp_state)
  assert _max_param_difference(single_state.params, dp_state.params) < 1e-5
  assert _max_param_difference(single_state.batch_stats, dp_state.batch_stats) < 1e-5
  assert _max_param_difference(state.batch_stats, dp_state.batch_stats) > 1e-3  # They moved.


def test_checkpoint_restored_equals_saved(tmp_path, tfds_dir, fashion_mnist):
  config, model, state, loss_fn, (batch, *_) = _setup(tfds_dir, fashion_mnist, 'vae',
                                                      {'rec_bce': 1.0, 'kl': 1.0})
  state, _ = jax.jit(functools.partial(training.train_step, objective=objectives.plain(config)))(
      state, batch, jax.random.PRNGKey(0))  # Non-trivial optimizer state.
  tree = {'train_state': state, 'rng': jax.random.PRNGKey(42)}
  meta = {'model': config.model.to_dict(), 'dataset': 'fashion_mnist', 'image_shape': [28, 28, 1]}
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'ckpt'), max_to_keep=2)
  ckpt.save(1, tree, {'epoch': 2, 'batch': 5}, meta)
  ckpt.wait_until_finished()
  fresh = training.create_train_state(config, model, (28, 28, 1), jax.random.PRNGKey(9))
  restored, data_state = ckpt.restore(1, {'train_state': fresh, 'rng': jax.random.PRNGKey(0)})
  assert data_state == {'epoch': 2, 'batch': 5}
  saved_leaves, restored_leaves = jax.tree.leaves(tree), jax.tree.leaves(restored)
  assert len(saved_leaves) == len(restored_leaves) > 10
  for a, b in zip(saved_leaves, restored_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ckpt.check_compatible(1, meta)
  other = dict(meta, model=dict(meta['model'], name='ae'))
  with pytest.raises(UserInputError, match="holds model=.*'vae'.*this run has model=.*'ae'"):
    ckpt.check_compatible(1, other)
  with pytest.raises(UserInputError, match="holds dataset=fashion_mnist, but this run has "
                     "dataset=fashion_mnist_scenes"):
    ckpt.check_compatible(1, dict(meta, dataset='fashion_mnist_scenes'))
  ckpt.close()


def test_checkpoint_of_another_class_count_is_refused_untouched(tmp_path):
  meta = {'model': {'name': 'unet'}, 'dataset': 'segmentation_folder', 'num_classes': 3}
  directory = str(tmp_path / 'ckpt')
  ckpt = checkpoints.Checkpointer(directory)
  ckpt.save(2, {'w': np.arange(4.0)}, {}, meta)
  ckpt.close()
  before = sorted(os.listdir(directory))
  ckpt = checkpoints.Checkpointer(directory)
  with pytest.raises(UserInputError, match='holds num_classes=3, but this run has num_classes=5'):
    training.restore_latest_intact(ckpt, dict(meta, num_classes=5), {'w': np.zeros(4)})
  ckpt.close()
  assert sorted(os.listdir(directory)) == before  # Nothing moved aside or deleted.


def test_half_written_checkpoint_is_ignored(tmp_path):
  """A save killed half way leaves orbax's temporary directory (renamed only when complete):
  the resumed run restores the newest whole step and leaves the remains alone."""
  directory = tmp_path / 'ckpt'
  ckpt = checkpoints.Checkpointer(str(directory))
  meta = {'model': {'name': 'ae'}}
  ckpt.save(1, {'w': np.arange(4.0)}, {'epoch': 0, 'batch': 1}, meta)
  ckpt.close()
  partial = directory / '2.orbax-checkpoint-tmp-1764590000000000'
  shutil.copytree(directory / '1', partial)
  for path in partial.rglob('*'):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  ckpt = checkpoints.Checkpointer(str(directory))
  assert ckpt.all_steps() == [1]
  (tree, data_state), step = training.restore_latest_intact(ckpt, meta, {'w': np.zeros(4)})
  ckpt.close()
  assert step == 1 and data_state == {'epoch': 0, 'batch': 1}
  np.testing.assert_array_equal(tree['w'], np.arange(4.0))
  assert partial.is_dir() and not (tmp_path / 'ckpt.damaged').exists()


@jax.custom_vjp
def _infinite_gradient(x):
  return x


_infinite_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.inf),))


def test_infinite_gradient_with_a_finite_loss_keeps_the_state(tfds_dir, fashion_mnist):
  """A loss whose value is finite but whose gradient is not: the step is non-finite (by its
  grad_norm) and changes nothing but the step counter."""
  config, model, state, loss_fn, (batch, *_) = _setup(tfds_dir, fashion_mnist, 'ae',
                                                      {'rec_mse': 1.0}, warmup_steps=0,
                                                      **{'model.features': (8, 16)})

  def bad_loss(outputs, batch, axis_name=None):
    return loss_fn({'rec_logits': _infinite_gradient(outputs['rec_logits'])}, batch, axis_name)

  objective = objectives.plain(config)
  objective.loss_fn = bad_loss
  new_state, metrics = jax.jit(functools.partial(training.train_step, objective=objective))(
      state, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(metrics['loss'])) and not np.isfinite(float(metrics['grad_norm']))
  assert float(metrics['nonfinite']) == 1.0 and int(new_state.step) == 1
  for before, after in zip(jax.tree.leaves((state.params, state.opt_state)),
                           jax.tree.leaves((new_state.params, new_state.opt_state))):
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))


def test_second_signal_of_the_same_kind_stops_at_once():
  """The first SIGTERM is only noted (the loop checkpoints at the next step boundary); a second
  one goes to the handler that was there before, i.e. stops the process at once."""
  received = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  try:
    with training.StopSignals() as signals:
      signal.raise_signal(signal.SIGTERM)
      assert signals.requested(1) == 'SIGTERM' and received == []
      signal.raise_signal(signal.SIGTERM)
      assert received == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.faults  # Three whole runs; the kill tests of test_faults check the same end to end.
def test_resume_gives_bit_identical_result(tmp_path, tfds_dir):
  """Uninterrupted 6 steps vs (6 steps, lose the last checkpoint, resume from step 3)."""
  config = small_config(tfds_dir)
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  results_a = training.train_and_evaluate(config, a)
  assert results_a['resumed_from_step'] is None
  training.train_and_evaluate(config, b)
  shutil.rmtree(os.path.join(b, 'checkpoints', '6'))  # As if killed between steps 3 and 6.
  results_b = training.train_and_evaluate(config, b)
  assert results_b['resumed_from_step'] == 3 and results_b['step'] == 6
  state_a, state_b = saved_state(a, 6), saved_state(b, 6)  # The arrays exactly as written.
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):  # Parameters, optimizer state, step and RNG, bit for bit.
    np.testing.assert_array_equal(x, y)
  assert results_a['test'] == results_b['test']


def test_schedule_and_clipping_values():
  from configs import default
  config = default.get_config()
  config.learning_rate, config.warmup_steps, config.num_train_steps = 1.0, 10, 110
  config.end_lr_factor = 0.0
  schedule = optimizers.make_schedule(config)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 0.5, rtol=1e-5)  # Half-way down the cosine.
  np.testing.assert_allclose(float(schedule(110)), 0.0, atol=1e-7)
  # A warmup longer than the run is clipped to it: linear up to the peak at the last step.
  config.warmup_steps, config.num_train_steps = 500, 100
  schedule = optimizers.make_schedule(config)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 50, 100)], [0.0, 0.5, 1.0],
                             rtol=1e-6)
  config.schedule = 'constant'
  np.testing.assert_allclose(float(optimizers.make_schedule(config)(50)), 0.5, rtol=1e-6)
  config.schedule = 'cosine'
  config.optimizer, config.schedule, config.momentum, config.grad_clip_norm = 'sgd', 'constant', 0.0, 1.0
  config.warmup_steps = 0
  tx, _ = optimizers.make_optimizer(config)
  grads = {'w': jnp.array([3.0, 4.0])}  # Norm 5, clipped to 1: update = -lr * g / 5.
  updates, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(updates['w'], [-0.6, -0.8], rtol=1e-6)


def test_every_is_true_at_multiples_and_the_last_step():
  from segae_jax.training.loop import every
  assert [s for s in range(1, 11) if every(3, 10)(s)] == [3, 6, 9, 10]


def _window(nonfinite, saved_step=None):
  from segae_jax.training.loop import MetricsWindow
  strategy = parallel.make_strategy('jit', training.train_step, training.eval_step)
  last_good = lambda: f'saved {saved_step}'
  window = MetricsWindow(strategy, nonfinite, skipped=2, last_good=last_good)
  for step, loss in enumerate([1.0, float('nan'), 4.0], start=1):
    window.add(step, {'loss': jnp.float32(loss), 'nonfinite': jnp.float32(not np.isfinite(loss))},
               images=8)
  return window


def test_metrics_window_skips_non_finite_steps_and_averages_the_rest():
  window = _window('skip')
  scalars = window.close(learning_rate=0.5)
  assert scalars['train/loss'] == 2.5 and scalars['train/learning_rate'] == 0.5
  assert scalars['train/skipped_steps'] == 3 and window.skipped == 3  # 2 restored + 1.
  assert scalars['train/images_per_s'] > 0 and window.train_images == 24
  assert window.close(learning_rate=0.5) == {'train/learning_rate': 0.5, 'train/skipped_steps': 3}


def test_metrics_window_stops_at_the_first_non_finite_step():
  window = _window('stop', saved_step=0)
  with pytest.raises(TrainingDiverged, match=r'train step 2 went non-finite \(loss=nan\); that '
                     r'state was not checkpointed and saved 0\.'):
    window.drain()


def _iterator():
  from segae_jax import data
  source = data.ArraySource({'image': np.arange(10 * 2, dtype=np.float32).reshape(10, 2)})
  return data.TrainIterator(source, 2, seed=3, preprocess=lambda ex, rng: dict(ex))


def test_prefetcher_keeps_the_position_of_the_next_batch_it_returns():
  """Two batches read ahead (one of them into the next epoch), the state saved is still that
  of the first batch not returned: a run resumed from it sees the same batches, in order."""
  from segae_jax.training.prefetch import DevicePrefetcher
  put = lambda batch: {k: jnp.asarray(v) for k, v in batch.items()}
  plain, prefetched = _iterator(), DevicePrefetcher(_iterator(), put, depth=2)
  for _ in range(4):
    np.testing.assert_array_equal(next(prefetched)['image'], next(plain)['image'])
  assert prefetched.get_state() == plain.get_state() == {
      'format': data.pipeline.STATE_FORMAT, 'epoch': 0, 'batch': 4, 'seed': 3,
      'global_batch_size': 2}
  resumed = DevicePrefetcher(_iterator(), put)
  resumed.set_state(prefetched.get_state())
  expected = [next(plain)['image'] for _ in range(3)]
  assert [np.asarray(next(resumed)['image']).tolist() for _ in range(3)] == \
      [e.tolist() for e in expected]
  assert resumed.get_state() == plain.get_state() == {
      'format': data.pipeline.STATE_FORMAT, 'epoch': 1, 'batch': 2, 'seed': 3,
      'global_batch_size': 2}
  with pytest.raises(ValueError, match='depth must be >= 1'):
    DevicePrefetcher(_iterator(), put, depth=0)


def test_the_jit_mesh_holds_every_device_once_in_mesh_utils_order():
  from jax.experimental import mesh_utils
  mesh = training.parallel.data_mesh()
  assert mesh.axis_names == ('data',)
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  np.testing.assert_array_equal(mesh.devices, mesh_utils.create_device_mesh((jax.device_count(),)))
