"""VAE/U-Net hybrid on fashion_mnist_scenes: a spatial Gaussian latent at the bottleneck,
segmentation decoder with encoder skips, reconstruction decoder from the latent alone;
L = alpha * L_rec + (1 - alpha) * L_seg + beta * KL (KL per pixel, like the other terms)."""
import ml_collections

from configs import unet_scenes


def get_config():
  config = unet_scenes.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'vae_unet', 'features': (16, 32, 64, 128), 'norm': 'batch',
      'upsample': 'transpose', 'dropout': 0.0, 'latent_channels': 16,
  })
  config.alpha = 0.5
  config.beta = 1e-3
  config.loss = ml_collections.ConfigDict({
      'rec_mse_per_pixel': config.get_ref('alpha'),
      'seg_ce': 1.0 - config.get_ref('alpha'),
      'kl_per_pixel': config.get_ref('beta'),
  })
  return config
