"""The U-Net of folder.py on your own labelled images, seen through the teacher methods'
augmentation: the strong view of configs/fixmatch_scenes.py (brightness / contrast / gamma,
blur, noise) CutMix'ed between pairs of images together with their masks (objective
'supervised_strong'). No unlabelled images: the baseline that shows what fixmatch_folder.py's
pseudo-labels add beyond their augmentation (benchmarks/label_efficiency.py).

  python train.py --config=configs/strong_folder.py --workdir=runs/strong_mine \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks

The class count, channels, normalisation and test split are inferred from the files, as in
configs/folder.py (each overridable, e.g. --config.data.num_classes=3).
"""
import ml_collections

from configs import folder
from segae_jax.training import objectives


def get_config():
  config = folder.get_config()
  config.data.strong_augment = objectives.strong_augment()
  config.objective = 'supervised_strong'
  config.objective_params = objectives.default_params('supervised_strong')
  # Cross-entropy alone, as the label-efficiency benchmark measured this recipe
  # (docs/results.md#label-efficiency), not folder.py's cross-entropy + Dice.
  config.loss = ml_collections.ConfigDict({'seg_ce': 1.0})
  return config
