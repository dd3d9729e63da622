"""Pretraining on fashion_mnist_scenes without masks: the U-Net encoder of unet_scenes.py with a
reconstruction decoder without skips (unet_ae) learns masked reconstruction (60% of the 8x8
patches hidden, the hidden pixels reconstructed) on all 10,000 training scenes; no mask is read.
configs/finetune_scenes.py then starts a U-Net from its encoder.

  python train.py --config=configs/pretrain_scenes.py --workdir=runs/pretrain_scenes
"""
import ml_collections

from configs import unet_scenes
from segae_jax.training import objectives


def get_config():
  config = unet_scenes.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'unet_ae', 'features': (16, 32, 64, 128), 'norm': 'batch', 'upsample': 'transpose',
      'dropout': 0.0})
  config.loss = ml_collections.ConfigDict({'rec_mse_per_pixel': 1.0})
  config.best_metric = ''   # No segmentation to score.
  config.objective = 'masked_rec'
  config.objective_params = objectives.default_params('masked_rec')
  return config
