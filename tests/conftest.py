"""Shared fixtures. `make test` sets XLA_FLAGS=--xla_force_host_platform_device_count=4."""
import os
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
