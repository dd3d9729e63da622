"""UniMatch on fashion_mnist_scenes: fixmatch_scenes.py's run (the U-Net of unet_scenes.py, 5% of
the masks, 16 pool scenes in every batch of 32) with the 'unimatch' objective: the student's
own pseudo-labels of the weak view (confident at its class's threshold) learnt on two
strong views, each CutMix'ed with its own box, and on the weak view's encoder features with half
their channels dropped: (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2. Source: Yang et al.,
CVPR 2023 (segae_jax/training/objectives/unimatch.py; docs/segmentation.md).

  python train.py --config=configs/unimatch_scenes.py --workdir=runs/unimatch_scenes \\
    [--config.objective_params.threshold=0.9 --config.objective_params.ema_decay=0.99]

With the settings the label-efficiency grid measured best (configs/unimatch_folder.py's
measured_recipe: the strong view suited to the empty background, class-adaptive thresholds):
+5.0 test mIoU [+2.8, +7.2] over unet_scenes.py's U-Net on the same masks (docs/results.md).
config.objective_params holds every field of the objective; the rest are at the defaults its
module declares (UniMatch's).
"""
from configs import fixmatch_scenes, unimatch_folder
from segae_jax.training import objectives


def get_config():
  config = fixmatch_scenes.get_config()
  config.data.strong_geometry = objectives.strong_geometry()
  # The hidden masks of the pool's scenes ride along: the log shows, per class, how many of the
  # pseudo-labels are confident and how many are right (no loss reads them).
  config.data.monitor_hidden_masks = True
  config.objective = 'unimatch'
  config.objective_params = objectives.default_params('unimatch')
  return unimatch_folder.measured_recipe(config)
