"""Slow set (`make test-slow`): a longer real training run must reach a known quality."""
import pytest

from conftest import small_config
from segae_jax import train


@pytest.mark.slow
def test_default_vae_learns_fashion_mnist(tmp_path, tfds_dir):
  """1,500 steps of the default VAE (batch 128, about 2 minutes on 2 cores): the test negative
  ELBO drops from ~543 nats (log 2 per pixel, an untrained decoder) to below 255 nats; the full
  4,000-step default run reaches about 238."""
  config = small_config(tfds_dir, num_train_steps=1500, warmup_steps=100, batch_size=128,
                        log_every_steps=500, eval_every_steps=1500, checkpoint_every_steps=1500)
  results = train.train_and_evaluate(config, str(tmp_path / 'vae'))
  assert results['test']['neg_elbo'] < 255.0, results['test']
  assert results['test']['kl'] > 5.0  # The latent is used (no posterior collapse).
  assert results['test']['psnr'] > 15.0, results['test']
