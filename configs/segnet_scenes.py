"""SegNet baseline on fashion_mnist_scenes: encoder max-pooling indices drive the decoder's
unpooling (no skip concatenation)."""
import ml_collections

from configs import unet_scenes


def get_config():
  config = unet_scenes.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'segnet', 'features': (16, 32, 64, 128), 'norm': 'batch', 'pooling_indices': True,
  })
  return config
