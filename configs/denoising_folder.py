"""Denoising (configs/denoising_scenes.py) on your own images: the SegAE of
segae_folder_semisup.py with cross-entropy on the labelled images and noise prediction on the
unlabelled ones.

  python train.py --config=configs/denoising_folder.py --workdir=runs/denoising_mine \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks \\
    --config.data.unlabeled_dir=data/unlabeled

The class count, channels, normalisation and test split are inferred from the files, as in
configs/folder.py (each overridable, e.g. --config.data.num_classes=3).
"""
import ml_collections

from configs import segae_folder_semisup
from segae_jax.training import objectives


def get_config():
  config = segae_folder_semisup.get_config()
  config.loss = ml_collections.ConfigDict({'seg_ce': 1.0})
  config.objective = 'denoising'
  config.objective_params = objectives.default_params('denoising')
  return config
