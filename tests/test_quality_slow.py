"""Slow set (`make test-slow`): a longer real training run must reach a known quality."""
import pytest

from conftest import small_config
from segae_jax import training


@pytest.mark.slow
def test_default_vae_learns_fashion_mnist(tmp_path, tfds_dir):
  """1,500 steps of the default VAE (batch 128, about 2 minutes on 2 cores): the test negative
  ELBO drops from ~543 nats (log 2 per pixel, an untrained decoder) to below 255 nats; the full
  4,000-step default run reaches about 238."""
  config = small_config(tfds_dir, num_train_steps=1500, warmup_steps=100, batch_size=128,
                        log_every_steps=500, eval_every_steps=1500, checkpoint_every_steps=1500)
  results = training.train_and_evaluate(config, str(tmp_path / 'vae'))
  assert results['test']['neg_elbo'] < 255.0, results['test']
  assert results['test']['kl'] > 5.0  # The latent is used (no posterior collapse).
  assert results['test']['psnr'] > 15.0, results['test']


@pytest.mark.slow
@pytest.mark.parametrize('config_file', ['unet_scenes', 'segae_scenes', 'vaeunet_scenes',
                                         'segnet_scenes'])
def test_scenes_configs_learn_to_segment(tmp_path, tfds_dir, config_file):
  """Each scenes config, 300 steps on real 64x64 scenes (2,000 train / 500 test): a model that
  labels every pixel background scores mIoU ~0.07 (background IoU ~0.75 over 11 classes); a
  learning one must be well above it."""
  config = small_config(tfds_dir, config_file, **{
      'data.num_train': 2000, 'data.num_test': 500, 'num_train_steps': 300, 'warmup_steps': 50,
      'batch_size': 32, 'eval_batch_size': 100, 'log_every_steps': 100, 'eval_every_steps': 300,
      'checkpoint_every_steps': 300})
  results = training.train_and_evaluate(config, str(tmp_path / config_file))
  assert results['test']['miou'] > 0.15, results['test']
  assert results['test']['pixel_accuracy'] > 0.8, results['test']
