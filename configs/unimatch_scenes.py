"""UniMatch on fashion_mnist_scenes: fixmatch_scenes.py's run (the U-Net of unet_scenes.py, 5% of
the masks, 16 pool scenes in every batch of 32, the same strong view) with the 'unimatch'
objective: the student's own pseudo-labels of the weak view (>= 95% confident) learnt on two
strong views, each CutMix'ed with its own box, and on the weak view's encoder features with half
their channels dropped: (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2. Source: Yang et al.,
CVPR 2023 (segae_jax/training/objectives/unimatch.py; docs/segmentation.md).

  python train.py --config=configs/unimatch_scenes.py --workdir=runs/unimatch_scenes \\
    [--config.objective_params.threshold=0.9 --config.objective_params.ema_decay=0.99]

config.objective_params holds every field of the objective, at the defaults its module declares.
"""
from configs import fixmatch_scenes
from segae_jax.training import objectives


def get_config():
  config = fixmatch_scenes.get_config()
  config.data.strong_geometry = objectives.strong_geometry()
  # The hidden masks of the pool's scenes ride along: the log shows, per class, how many of the
  # pseudo-labels are confident and how many are right (no loss reads them).
  config.data.monitor_hidden_masks = True
  config.objective = 'unimatch'
  config.objective_params = objectives.default_params('unimatch')
  return config
