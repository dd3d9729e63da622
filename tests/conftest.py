"""Shared fixtures. `make test` sets XLA_FLAGS=--xla_force_host_platform_device_count=4."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# The tests start their own multi-process runs: a cluster the suite itself runs in (a Slurm job,
# a Kubernetes pod) must not be joined by the commands it starts. (What JAX's detection reads.)
for _name in [n for n in os.environ if n.startswith(('SLURM_', 'OMPI_', 'KUBERNETES_'))]:
  del os.environ[_name]

# 4 CPU devices for the pmap / sharded-jit tests; set before JAX is first imported.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
# The suite's programs are tiny and compiled once or twice each: compilation, not execution, is
# most of its time. LLVM's O0 instead of O2 compiles them about 40% faster (same results here to
# the digits the tests compare; every test, and every command it starts, uses the same flags, so
# bit-for-bit comparisons between runs hold). Timings belong to benchmarks/, which run without it;
# `make test-slow`, whose long trainings are execution-bound, turns it off (SEGAE_FAST_COMPILE=0).
FAST_COMPILE = ('--xla_backend_optimization_level=0'
                if os.environ.get('SEGAE_FAST_COMPILE', '1') != '0' else '')
if FAST_COMPILE and FAST_COMPILE not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' ' + FAST_COMPILE
# One compilation cache for the whole test session, this process and the commands it starts:
# the suite compiles the same small programs many times (every train_and_evaluate, every CLI
# run builds its jit wrappers afresh). A compiled program is looked up by its HLO, so results
# are those of a fresh compilation. Set before JAX is first imported; fresh per session.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix='segae_jax_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
else:
  _CACHE_DIR = None  # The caller's own cache: left alone.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# oneDNN's OpenMP threads sleep as soon as a convolution ends instead of spinning for more work:
# with 4 forced devices and many tiny programs, spinning teams take the cores from the threads
# with work (test_segmentation.py + test_train.py: 115 s spinning, 93 s passive, 2026-12-01).
# Training keeps OpenMP's default, faster for one device (docs/performance.md, threads). Read by
# libgomp when oneDNN is first loaded, which is after this.
os.environ.setdefault('OMP_WAIT_POLICY', 'passive')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `from configs import default` inside config files.
  sys.path.insert(0, ROOT)


def pytest_sessionfinish(session, exitstatus):
  if _CACHE_DIR:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A tfds data dir holding Fashion-MNIST prepared once from the real IDX files (about 5 s)."""
  from segae_jax.data import fashion_mnist
  path = str(tmp_path_factory.mktemp('tfds'))
  fashion_mnist.prepare('', path)
  return path


@pytest.fixture(scope='session')
def fashion_mnist(tfds_dir):
  """The real dataset as the training loop sees it (no binarisation)."""
  from segae_jax import data
  return data.build({'name': 'fashion_mnist', 'tfds_dir': tfds_dir, 'cache': 'memory',
                     'binarize': False})


def small_config(tfds_dir, config_file='default', **overrides):
  """A config file's config shrunk for tests: a few steps, small batches."""
  import importlib
  config = importlib.import_module(f'configs.{config_file}').get_config()
  config.data.tfds_dir = tfds_dir
  config.num_train_steps = 6
  config.warmup_steps = 2
  config.batch_size = 32
  config.eval_batch_size = 1000
  config.log_every_steps = 2
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 3
  config.num_pictures = 8
  return set_fields(config, overrides)


def set_fields(config, overrides):
  """Sets {'a.b': value} fields of a ConfigDict in place (a value may replace a whole
  sub-config, e.g. 'loss': {...}); returns the config."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


# Tiny real scenes for segmentation tests: 32x32 canvases, 64 train / 32 test scenes, 2 levels.
SCENES = {'data.canvas_size': 32, 'data.num_train': 64, 'data.num_test': 32, 'data.max_scale': 1.0,
          'model.features': (8, 16), 'batch_size': 8, 'eval_batch_size': 16, 'num_pictures': 4,
          'num_train_steps': 4, 'eval_every_steps': 2, 'checkpoint_every_steps': 2}


def scenes_config(tfds_dir, config_file='unet_scenes', **overrides):
  return small_config(tfds_dir, config_file, **{**SCENES, **overrides})


# train.py flags for a 6-step run of a Fashion-MNIST config.
SMALL = ['--config.num_train_steps=6', '--config.warmup_steps=2', '--config.batch_size=32',
         '--config.log_every_steps=2', '--config.eval_every_steps=3',
         '--config.checkpoint_every_steps=3', '--config.num_pictures=8']


def run_train(*args, tfds_dir=None):
  """Runs train.py as a subprocess (returns the CompletedProcess)."""
  cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *args]
  if tfds_dir:
    cmd.append(f'--config.data.tfds_dir={tfds_dir}')
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


# The shared U-Net run: flip and random resized crop on, half the masks hidden, the best
# checkpoint kept: everything a resumed segmentation run must restore exactly.
UNET_RUN = {'data.augment.crop_min_scale': 0.5, 'labeled_fraction': 0.5}


def unet_run_config(tfds_dir, **overrides):
  return scenes_config(tfds_dir, **{**UNET_RUN, **overrides})


@pytest.fixture(scope='session')
def unet_scenes_run(tmp_path_factory, tfds_dir):
  """(workdir, results) of a U-Net (BatchNorm, pmap) trained 4 steps on tiny real scenes;
  shared by the segmentation and detection tests, which only read it or write beside its
  checkpoints."""
  from segae_jax import training
  workdir = str(tmp_path_factory.mktemp('seg') / 'unet')
  return workdir, training.train_and_evaluate(unet_run_config(tfds_dir), workdir)


def saved_state(workdir, step, directory='checkpoints'):
  """The state saved at `step` in workdir/directory, exactly as written (nested numpy dicts)."""
  from segae_jax.training import checkpoints
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, directory))
  state = ckpt.read_state(step)
  ckpt.close()
  return state


def assert_trees_equal(a, b, atol=0.0):
  """Same structure and every leaf equal (bit for bit unless `atol`)."""
  import jax
  import numpy as np
  assert jax.tree.structure(a) == jax.tree.structure(b)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) > 5
  for x, y in zip(leaves_a, leaves_b):
    if atol:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='session')
def tiny_vae_run(tmp_path_factory, tfds_dir):
  """(workdir, CompletedProcess) of the suite's one end-to-end CLI training: `python train.py`
  with configs/default.py (the VAE, latent 32, on the real Fashion-MNIST) narrowed and shortened
  to 6 steps, as a user's smoke run would be: the default warmup of 100 steps is then longer than
  the run (clipped, with a warning). Evaluated at steps 3 and 6,
  checkpointed at 3 and 6; shared by the CLI, evaluate, generate, compress and probe tests."""
  workdir = str(tmp_path_factory.mktemp('tiny') / 'vae')
  flags = [f for f in SMALL if not f.startswith('--config.warmup_steps')]
  flags += ['--config.model.features=(8,16)', '--config.model.hidden_dim=64']  # Narrow: fast.
  proc = run_train('--config=configs/default.py', f'--workdir={workdir}', *flags,
                   tfds_dir=tfds_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.fixture(scope='session')
def tiny_vae_workdir(tiny_vae_run):
  return tiny_vae_run[0]


def untrained_run(name, **model):
  """A common.TrainedRun with initial parameters, for paths that need no training."""
  import jax
  import ml_collections
  import numpy as np
  from segae_jax.tools import common
  from segae_jax import models
  config = ml_collections.ConfigDict({
      'model': {'name': name, 'latent_dim': 8, **model}, 'seed': 0, 'eval_batch_size': 64,
      'data': {'name': 'fashion_mnist'}})
  net = models.build(config.model, (28, 28, 1))
  variables = net.init({'params': jax.random.PRNGKey(0), 'reparam': jax.random.PRNGKey(1)},
                       np.zeros((1, 28, 28, 1), np.float32))
  return common.TrainedRun(config=config, model=net, variables=dict(variables), step=0,
                           checkpoint='latest', image_shape=(28, 28, 1), class_names=[])


def cpu_env(devices):
  """`devices` CPU devices for a subprocess, on any host (an accelerator host too: these tests
  are about device counts and processes, not about the accelerator)."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}'}


def logged_step(workdir):
  """The last train step written to metrics.jsonl (0 before the first)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  records = [json.loads(line) for line in open(path) if line.endswith('\n')]  # Whole lines.
  return max((r['step'] for r in records if 'train/loss' in r), default=0)
