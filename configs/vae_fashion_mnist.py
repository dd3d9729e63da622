"""beta-VAE on Fashion-MNIST with a larger latent; try --config.beta=4 for a more disentangled code."""
from configs import default


def get_config():
  config = default.get_config()
  config.model.latent_dim = 64
  config.num_train_steps = 6000
  return config
