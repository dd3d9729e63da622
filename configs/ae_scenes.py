"""Unsupervised convolutional autoencoder on fashion_mnist_scenes: the U-Net encoder of the
segmentation configs and a skip-free reconstruction decoder, trained on the images alone (the
masks are never read). Its encoder features feed `python -m segae_jax.tools.unsupervised` (see
configs/unsup_scenes.py)."""
import ml_collections

from configs import unet_scenes


def get_config():
  config = unet_scenes.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'unet_ae', 'features': (16, 32, 64, 128), 'norm': 'batch', 'upsample': 'transpose',
      'dropout': 0.0,
  })
  # Per-pixel squared error: the same reconstruction term as SegAE's at alpha = 1.
  config.loss = ml_collections.ConfigDict({'rec_mse_per_pixel': 1.0})
  config.best_metric = ''
  # No batch carries a mask: the encoder's features are label-free (tools.unsupervised).
  config.data.drop_masks = True
  return config
