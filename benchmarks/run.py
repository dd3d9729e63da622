"""The benchmark suite: `make bench` or `python -m benchmarks.run [--only=NAME,...]`.

Prints one JSON line per figure and writes them all to benchmarks/results/results.json
(--output). Every figure goes through the project's own code: models.build, losses.make_loss_fn,
training.create_train_state / training.train_step, parallel.make_strategy, data.TrainIterator.

Figures (name: what is measured):
  matmul_peak              float32 [2048, 2048] @ [2048, 2048] under jit, GFLOP/s (the machine's
                           practical peak, the yardstick for the train steps).
  train_step/<model>       one device, one real batch reused: compile_s (lower + compile),
                           images_per_s (batch / median of >= 10 timed steps after 3 warm-up
                           steps, each waited for), step_gflop (XLA cost analysis, forward +
                           backward + Adam; for a oneDNN step, of the same step on XLA's
                           convolutions), gflop_per_s and fraction_of_matmul_peak.
                           Models: vae_fmnist and unet64 exactly as ../shared/bench/README.md
                           specifies them (in --compute_dtype), then the main configs (default
                           VAE, U-Net scenes, SegAE scenes).
  parallel/<strategy>/<n>  pmap vs sharded jit on n = 2 and 4 forced CPU devices, same global
                           batch (U-Net scenes model, deterministic): images_per_s, and the max
                           absolute parameter difference between the two strategies after 5 steps
                           (one subprocess per device count: XLA fixes it at start-up).
  input_pipeline/<dataset> data.TrainIterator producing device-shaped batches (with the config's
                           preprocessing and augmentation): examples_per_s, and its ratio to
                           the matching train step's images/s.
  data_wait/<config>       a real training loop of 30 steps: the fraction of wall time spent
                           waiting for the next batch.
  peak_memory/unet64/<impl> peak resident memory (MiB, ru_maxrss) of a subprocess that trains
                           unet64 for 5 steps, for conv_impl xla, matmul_grad and onednn.
  side_by_side/..., threads/<setting>  benchmarks/side_by_side.py: interleaved rounds against
                           ../shared/bench/torch_ref.py eager and --compile (with --torch_python),
                           float32 and bfloat16 (benchmarks/torch_ref.py --bf16), resumable;
                           and the oneDNN steps under OpenMP/XLA thread settings.
  streaming: pipeline_workers/<n>, streaming_rss/<N>, data_wait/unet_folder128,
                           unet256_step_flop (benchmarks/input_pipeline.py): generated folders of
                           256x256 RGB JPEGs through grain workers, memory over 2,000 vs 20,000
                           images, a real U-Net run's data wait.
  main_job/images_per_s    only with --baseline=DIR (a checkout of earlier code): the default
                           VAE's train images/s there and here, alternating, 3 pairs.
"""
import argparse
import json
import os
import resource
import sys
import time
from typing import Dict, List

import numpy as np

from benchmarks.common import RESULTS, dated_ledger, emit, json_lines, write_output

TIMED_STEPS = 10
WARMUP_STEPS = 3


# ----------------------------------------------------------------------------- configs


def reference_config(name: str):
  """The two reference models of ../shared/bench/README.md as training configs."""
  from configs import default, unet_scenes
  if name == 'vae_fmnist':
    config = default.get_config()   # Conv(32, 64) stride 2, Dense 256, latent 32: the spec.
    config.batch_size = 256
    config.loss = {'rec_bce': 1.0, 'kl': 1.0}
  elif name == 'unet64':
    config = unet_scenes.get_config()
    config.model.features = (32, 64, 128, 256)   # BatchNorm, transposed-conv up path.
    config.batch_size = 32
  else:
    raise ValueError(name)
  config.learning_rate = 1e-3
  config.schedule = 'constant'
  config.warmup_steps = 0
  return config


def main_configs():
  from configs import default, segae_scenes, unet_scenes
  return {'default_vae': default.get_config(), 'unet_scenes': unet_scenes.get_config(),
          'segae_scenes': segae_scenes.get_config()}


def setup_benchmark(config, pmap: bool = False):
  """(dataset, initial TrainState, train step, eval step) for a config, built as
  train_and_evaluate builds them (compute dtype and loss scale included); with `pmap` the model
  averages BatchNorm statistics over the pmap axis. The steps are the pure functions, not yet
  compiled."""
  import jax
  from segae_jax import data, training
  from segae_jax.training import parallel
  dataset = data.build(config.data)
  model = training.build_model(config, dataset.image_shape, dataset.num_classes,
                               parallel.norm_axis_name('pmap' if pmap else 'jit'))
  state = training.create_train_state(config, model, dataset.image_shape, jax.random.PRNGKey(0))
  return (dataset, state) + training.step_functions(config)


def train_iterator(config, dataset, num_local_devices=None):
  """The training input pipeline of train_and_evaluate (preprocessing and augmentation)."""
  from segae_jax import data
  from segae_jax.data import augment
  return data.TrainIterator(
      dataset.train, config.batch_size, config.seed,
      augment.with_augmentation(dataset.preprocess, config.data.get('augment', {})),
      num_local_devices=num_local_devices)


# ----------------------------------------------------------------------------- figures


def matmul_peak() -> Dict:
  import jax
  import jax.numpy as jnp
  n = 2048
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  times = []
  for _ in range(TIMED_STEPS):
    start = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return {'figure': 'matmul_peak', 'shape': [n, n, n], 'dtype': 'float32',
          'gflop_per_s': 2 * n ** 3 / np.median(times) / 1e9}


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def step_flops(config, state, batch, rng, compiled) -> float:
  """The step's FLOPs from XLA's cost analysis. XLA cannot see inside oneDNN's custom calls
  (it counts them as zero), so a oneDNN step is counted on the XLA path's program: the same
  mathematics, built from the same config with conv_impl='xla'."""
  import jax
  from segae_jax.models import conv_ops
  if conv_ops.resolve(config.get('conv_impl', 'auto')) != 'onednn':
    return _flops(compiled)
  xla_config = config.copy_and_resolve_references()
  xla_config.conv_impl = 'xla'
  _, xla_state, xla_train_fn, _ = setup_benchmark(xla_config)
  return _flops(jax.jit(xla_train_fn).lower(xla_state, batch, rng).compile())


def train_step_figure(name: str, config, peak: float) -> Dict:
  import jax
  from segae_jax.models import conv_ops
  dataset, state, train_fn, _ = setup_benchmark(config)
  batch = next(train_iterator(config, dataset))
  step = jax.jit(train_fn, donate_argnums=(0,))
  rng = jax.random.PRNGKey(1)
  start = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  flops = step_flops(config, state, batch, rng, compiled)
  for _ in range(WARMUP_STEPS):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(TIMED_STEPS):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  gflops = flops / median / 1e9
  return {'figure': f'train_step/{name}', 'model': config.model.name,
          'conv_impl': config.get('conv_impl', 'auto'),
          'conv_path': conv_ops.resolve(config.get('conv_impl', 'auto')),
          'batch_size': config.batch_size, 'image_shape': list(batch['image'].shape[1:]),
          'compile_s': compile_s, 'images_per_s': config.batch_size / median,
          'step_s_median': median, 'step_s_min': float(np.min(times)),
          'timed_steps': TIMED_STEPS, 'step_gflop': flops / 1e9, 'gflop_per_s': gflops,
          'fraction_of_matmul_peak': gflops / peak if peak else None,
          'compute_dtype': config.get('compute_dtype', 'float32'),
          'platform': jax.devices()[0].platform}


def input_pipeline_figure(name: str, config, steps_per_s_reference: float) -> Dict:
  from segae_jax import data
  iterator = train_iterator(config, data.build(config.data), num_local_devices=1)
  next(iterator)
  batches = 0
  start = time.perf_counter()
  while time.perf_counter() - start < 5.0:
    next(iterator)
    batches += 1
  elapsed = time.perf_counter() - start
  per_s = batches * config.batch_size / elapsed
  return {'figure': f'input_pipeline/{name}', 'dataset': config.data.name,
          'batch_size': config.batch_size, 'examples_per_s': per_s,
          'train_step_images_per_s': steps_per_s_reference,
          'ratio_to_train_step': per_s / steps_per_s_reference if steps_per_s_reference else None}


def data_wait_figure(name: str, config, steps: int = 30) -> Dict:
  """A real loop (the project's strategy, iterator and step) timing next(iterator) apart."""
  import jax
  from segae_jax.training import parallel
  dataset, state, train_fn, eval_fn = setup_benchmark(config, pmap=True)
  strategy = parallel.make_strategy('pmap', train_fn, eval_fn)
  iterator = train_iterator(config, dataset, strategy.device_axis_size)
  state = strategy.replicate(state)
  rng = jax.random.PRNGKey(1)
  state, metrics = strategy.train_step(state, strategy.put_batch(next(iterator)), rng)
  jax.block_until_ready(metrics)
  waiting = 0.0
  start = time.perf_counter()
  for _ in range(steps):
    t0 = time.perf_counter()
    batch = strategy.put_batch(next(iterator))
    waiting += time.perf_counter() - t0
    state, metrics = strategy.train_step(state, batch, rng)
  jax.block_until_ready(metrics)
  total = time.perf_counter() - start
  return {'figure': f'data_wait/{name}', 'steps': steps, 'wall_s': total,
          'waiting_for_data_s': waiting, 'fraction_waiting': waiting / total}


def parallel_child(num_devices: int) -> List[Dict]:
  """Runs inside a subprocess with `num_devices` forced CPU devices."""
  import jax
  from segae_jax.training import parallel
  from configs import unet_scenes
  config = unet_scenes.get_config()
  figures, params = [], {}
  for name in parallel.STRATEGIES:
    dataset, initial, train_fn, eval_fn = setup_benchmark(config, pmap=name == 'pmap')
    strategy = parallel.make_strategy(name, train_fn, eval_fn)
    iterator = train_iterator(config, dataset, strategy.device_axis_size)
    state = strategy.replicate(initial)  # A copy: `initial` survives the donated steps.
    rng = jax.random.PRNGKey(1)
    batches = [strategy.put_batch(next(iterator)) for _ in range(WARMUP_STEPS + TIMED_STEPS)]
    times = []
    for i, batch in enumerate(batches):
      start = time.perf_counter()
      state, metrics = strategy.train_step(state, batch, rng)
      jax.block_until_ready(metrics)
      if i >= WARMUP_STEPS:
        times.append(time.perf_counter() - start)
    # Parameters after the first 5 steps, from the initial state, for the strategy comparison.
    fresh = strategy.replicate(initial)
    for batch in batches[:5]:
      fresh, metrics = strategy.train_step(fresh, batch, rng)
    params[name] = strategy.fetch(fresh).params
    figures.append({'figure': f'parallel/{name}/{num_devices}', 'devices': num_devices,
                    'batch_size': config.batch_size, 'model': config.model.name,
                    'images_per_s': config.batch_size / float(np.median(times))})
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(params['pmap']), jax.tree.leaves(params['jit'])))
  for f in figures:
    f['max_abs_param_diff_pmap_vs_jit_after_5_steps'] = diff
  return figures


def memory_child(conv_impl: str = 'auto') -> Dict:
  import jax
  config = reference_config('unet64')
  config.conv_impl = conv_impl
  dataset, state, train_fn, _ = setup_benchmark(config)
  iterator = train_iterator(config, dataset)
  step = jax.jit(train_fn, donate_argnums=(0,))
  for _ in range(5):
    state, metrics = step(state, next(iterator), jax.random.PRNGKey(0))
  jax.block_until_ready(metrics)
  return {'figure': f'peak_memory/unet64/{conv_impl}', 'steps': 5,
          'batch_size': config.batch_size,
          'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(args: List[str], devices: int) -> List[Dict]:
  return json_lines([sys.executable, '-m', 'benchmarks.run', *args], f'benchmark child {args}',
                    {'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'})


# ----------------------------------------------------------------------------- main


ALL = ('matmul', 'reference', 'configs', 'pipeline', 'parallel', 'memory', 'side_by_side',
       'threads', 'streaming')


def step_figures(only, results: List[Dict], conv_impl: str, compute_dtype: str) -> float:
  """The figures of `only` that time training steps in this process (matmul peak, the reference
  networks, the shipped configs, their input pipelines), appended to `results`; returns the
  matmul peak in GFLOP/s (0.0 when not measured), which the step figures are set against."""
  peak = 0.0
  steps = {}
  if {'matmul', 'reference', 'configs', 'side_by_side'} & set(only):
    figure = matmul_peak()
    peak = figure['gflop_per_s']
    emit(results, figure)
  if 'reference' in only:
    for name in ('vae_fmnist', 'unet64'):
      config = reference_config(name)
      config.conv_impl = conv_impl
      config.compute_dtype = compute_dtype
      figure = train_step_figure(name, config, peak)
      steps[name] = figure['images_per_s']
      emit(results, figure)
  configs = main_configs()
  if 'configs' in only:
    for name, config in configs.items():
      config = config.copy_and_resolve_references()
      config.conv_impl = conv_impl
      figure = train_step_figure(name, config, peak)
      steps[name] = figure['images_per_s']
      emit(results, figure)
  if 'pipeline' in only:
    for name in ('default_vae', 'unet_scenes'):
      emit(results, input_pipeline_figure(name, configs[name], steps.get(name, 0.0)))
      emit(results, data_wait_figure(name, configs[name]))
  return peak


def run(only, output: str, conv_impl: str = 'auto', baseline: str = '',
        torch_python: str = '', compute_dtype: str = 'float32', side_by_side_rounds: int = 4,
        side_by_side_ledger: str = '') -> List[Dict]:
  """Runs the figures in `only`; the train-step figures build their models with `conv_impl`
  ('auto' | 'xla' | 'matmul_grad' | 'onednn', segae_jax.models.conv_ops), to compare
  implementations; with `baseline` (a checkout of other code) also the main job's images/s there
  and here; with `torch_python` (a Python with PyTorch) the side-by-side figures, float32 and
  bfloat16, `side_by_side_rounds` rounds, each finished round kept in `side_by_side_ledger`
  (default benchmarks/results/side_by_side_<date>.jsonl) and read back by a re-run."""
  results: List[Dict] = []
  peak = step_figures(only, results, conv_impl, compute_dtype)
  if 'parallel' in only:
    for devices in (2, 4):
      for figure in _child(['--child=parallel', f'--devices={devices}'], devices):
        emit(results, figure)
  if 'memory' in only:
    for impl in ('xla', 'matmul_grad', 'onednn'):
      for figure in _child(['--child=memory', f'--conv_impl={impl}'], 1):
        emit(results, figure)
  if 'side_by_side' in only and torch_python:
    from benchmarks import side_by_side
    def step_figure(name, dtype):
      config = reference_config(name)
      config.conv_impl = conv_impl
      config.compute_dtype = dtype
      return train_step_figure(name, config, peak)

    ledger = side_by_side_ledger or dated_ledger('side_by_side')
    for figure in side_by_side.figures(torch_python, step_figure, side_by_side_rounds,
                                       ('float32', 'bfloat16'), ledger):
      emit(results, figure)
  if 'threads' in only:
    from benchmarks import side_by_side
    for figure in side_by_side.thread_figures():
      emit(results, figure)
  if 'streaming' in only:
    from benchmarks import input_pipeline
    for figure in input_pipeline.figures():
      emit(results, figure)
  if baseline:
    from benchmarks import input_pipeline
    for figure in input_pipeline.main_job_figures(os.path.abspath(baseline)):
      emit(results, figure)
  import jax
  meta = {'figure': 'machine', 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
          'backend': jax.default_backend(), 'date': time.strftime('%Y-%m-%d %H:%M:%S')}
  emit(results, meta)
  write_output(output, json.dumps(results, indent=1))
  return results


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default=','.join(ALL),
                      help=f'comma-separated subset of {", ".join(ALL)}')
  parser.add_argument('--output', default=os.path.join(RESULTS, 'results.json'))
  parser.add_argument('--conv_impl', default='auto', choices=('auto', 'xla', 'matmul_grad', 'onednn'),
                      help='convolution gradients of the train-step figures (conv_ops)')
  parser.add_argument('--baseline', default='',
                      help='a checkout of earlier code: also time its main job against this one')
  parser.add_argument('--torch_python', default='',
                      help='a Python with PyTorch: the side-by-side figures against '
                           '../shared/bench/torch_ref.py (skipped without it)')
  parser.add_argument('--compute_dtype', default='float32',
                      choices=('float32', 'bfloat16', 'float16'),
                      help='config.compute_dtype of the reference train-step figures')
  parser.add_argument('--side_by_side_rounds', type=int, default=4,
                      help='interleaved rounds of the side-by-side figures')
  parser.add_argument('--side_by_side_ledger', default='',
                      help='JSON lines of finished side-by-side rounds, read back on a re-run '
                           '(default benchmarks/results/side_by_side_<date>.jsonl: delete it '
                           'to re-measure the same day)')
  parser.add_argument('--child', choices=('parallel', 'memory'), help=argparse.SUPPRESS)
  parser.add_argument('--devices', type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child == 'parallel':
    for figure in parallel_child(args.devices):
      print(json.dumps(figure), flush=True)
    return
  if args.child == 'memory':
    print(json.dumps(memory_child(args.conv_impl)), flush=True)
    return
  only = [x for x in args.only.split(',') if x]
  unknown = [x for x in only if x not in ALL]
  if unknown:
    parser.error(f'unknown --only {", ".join(unknown)}; known: {", ".join(ALL)}')
  run(only, args.output, args.conv_impl, args.baseline, args.torch_python, args.compute_dtype,
      args.side_by_side_rounds, args.side_by_side_ledger)


if __name__ == '__main__':
  main()
