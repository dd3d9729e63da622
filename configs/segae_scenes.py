"""Segmentation autoencoder on fashion_mnist_scenes: a shared encoder trained with
L = alpha * L_rec + (1 - alpha) * L_seg (reconstruction decoder without skips, segmentation
decoder with them). `--config.alpha` moves the balance; `--config.labeled_fraction=0.05` hides
95% of the masks while every image still feeds the reconstruction term."""
import ml_collections

from configs import unet_scenes


def get_config():
  config = unet_scenes.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'segae', 'features': (16, 32, 64, 128), 'norm': 'batch', 'upsample': 'transpose',
      'dropout': 0.0, 'seg_skips': True, 'rec_skips': False,
  })
  config.alpha = 0.5
  # rec_mse is summed over the 4,096 pixels while seg_ce is a per-pixel mean: the per-pixel
  # squared error keeps both terms on one scale, so alpha means what it says.
  config.loss = ml_collections.ConfigDict({
      'rec_mse_per_pixel': config.get_ref('alpha'),
      'seg_ce': 1.0 - config.get_ref('alpha'),
  })
  return config
