"""Deterministic convolutional autoencoder on Fashion-MNIST with a squared-error loss."""
import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.data.binarize = False
  config.model.name = 'ae'
  config.loss = ml_collections.ConfigDict({'rec_mse': 1.0})
  return config
