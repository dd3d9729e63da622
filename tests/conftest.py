"""Shared fixtures. `make test` sets XLA_FLAGS=--xla_force_host_platform_device_count=4."""
import os
import subprocess
import sys

import pytest

# 4 CPU devices for the pmap / sharded-jit tests; set before JAX is first imported.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `from configs import default` inside config files.
  sys.path.insert(0, ROOT)


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
  return data.build({'name': 'fashion_mnist', 'tfds_dir': tfds_dir, 'cache': True,
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
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
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


@pytest.fixture(scope='session')
def unet_scenes_run(tmp_path_factory, tfds_dir):
  """(workdir, results) of a U-Net trained 4 steps on tiny real scenes; shared by the
  segmentation and detection tests, which only read it or write beside its checkpoints."""
  from segae_jax import train
  workdir = str(tmp_path_factory.mktemp('seg') / 'unet')
  return workdir, train.train_and_evaluate(scenes_config(tfds_dir), workdir)


@pytest.fixture(scope='session')
def tiny_vae_workdir(tmp_path_factory, tfds_dir):
  """The default VAE trained 6 steps by train.py (one evaluation, one checkpoint); shared by the
  generate, compress and probe tests."""
  workdir = str(tmp_path_factory.mktemp('tiny') / 'vae')
  proc = run_train('--config=configs/default.py', f'--workdir={workdir}', *SMALL,
                   '--config.eval_every_steps=6', '--config.checkpoint_every_steps=6',
                   tfds_dir=tfds_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir
