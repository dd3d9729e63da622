"""FixMatch-style pseudo-labelling (configs/fixmatch_scenes.py) on your own images: a U-Net on a
few labelled images (images_dir + masks_dir) and many unlabelled ones (unlabeled_dir, searched
recursively), 16 of every batch of 32 from the pool.

  python train.py --config=configs/fixmatch_folder.py --workdir=runs/fixmatch_mine \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks \\
    --config.data.unlabeled_dir=data/unlabeled

The class count, channels, normalisation and test split are inferred from the files, as in
configs/folder.py (each overridable, e.g. --config.data.num_classes=3).
"""
import ml_collections

from configs import folder
from segae_jax.training import objectives


def get_config():
  config = folder.get_config()
  config.data.unlabeled_dir = 'data/unlabeled'
  config.data.unlabeled_per_batch = 16
  config.data.strong_augment = objectives.strong_augment()
  config.batch_size = 32
  config.objective = 'fixmatch'
  config.objective_params = objectives.default_params('fixmatch')
  # Cross-entropy alone, as the label-efficiency benchmark measured this recipe
  # (docs/results.md#label-efficiency), not folder.py's cross-entropy + Dice.
  config.loss = ml_collections.ConfigDict({'seg_ce': 1.0})
  return config
