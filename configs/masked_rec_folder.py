"""Masked reconstruction (configs/masked_rec_scenes.py) on your own images: the SegAE of
segae_folder_semisup.py, its unlabelled images seen with 60% of their 16x16 patches hidden (at the
default 128x128; the patch must divide data.image_size).

  python train.py --config=configs/masked_rec_folder.py --workdir=runs/masked_mine \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks \\
    --config.data.unlabeled_dir=data/unlabeled

The class count, channels, normalisation and test split are inferred from the files, as in
configs/folder.py (each overridable, e.g. --config.data.num_classes=3).
"""
from configs import segae_folder_semisup
from segae_jax.training import objectives


def get_config():
  config = segae_folder_semisup.get_config()
  config.objective = 'masked_rec'
  config.objective_params = objectives.default_params('masked_rec', patch_size=16)
  return config
