"""UniMatch on fashion_mnist_scenes: the U-Net of unet_scenes.py with 5% of the masks (500
scenes); the other 9,500 training scenes are an unlabelled pool, 16 of every batch of 32. The
weak view of each pool scene gives the pseudo-labels (the student's own, >= 95% confident); the
student learns them on two strong views, each CutMix'ed with its own box, and on the weak view's
encoder features with half their channels dropped: (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2.
Source: Yang et al., CVPR 2023 (segae_jax/training/objectives/unimatch.py; docs/segmentation.md).

  python train.py --config=configs/unimatch_scenes.py --workdir=runs/unimatch_scenes \\
    [--config.objective_params.threshold=0.9 --config.objective_params.ema_decay=0.99]

config.objective_params holds every field of the objective at the defaults its module declares;
config.data.strong_augment every field of data.views.StrongView, at its defaults.
"""
from configs import unet_scenes
from segae_jax.training import objectives


def get_config():
  config = unet_scenes.get_config()
  config.labeled_fraction = 0.05
  config.data.unlabeled_per_batch = 16   # Of each batch of 32: the hidden masks' scenes.
  config.data.strong_augment = objectives.strong_augment()
  config.objective = 'unimatch'
  config.objective_params = objectives.default_params('unimatch')
  return config
