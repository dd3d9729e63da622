"""A convolutional autoencoder on your own images, no masks needed (dataset image_folder; see
configs/vae_folder.py for the data fields):

  python train.py --config=configs/ae_folder.py --workdir=runs/my_ae --config.data.images_dir=DIR
"""
import ml_collections

from configs import vae_folder


def get_config():
  config = vae_folder.get_config()
  config.model.name = 'ae'
  config.loss = ml_collections.ConfigDict({'rec_mse': 1.0})
  return config
