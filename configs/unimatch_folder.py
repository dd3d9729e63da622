"""UniMatch (configs/unimatch_scenes.py) on your own images: a U-Net on a few labelled images
(images_dir + masks_dir) and many unlabelled ones (unlabeled_dir, searched recursively), 16 of
every batch of 32 from the pool. Each pool image's weak view is pseudo-labelled by the student
itself; two strong views (CutMix'ed) and the weak view's features with half their channels
dropped learn those labels: (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2 (Yang et al., CVPR
2023; segae_jax/training/objectives/unimatch.py, docs/segmentation.md).

  python train.py --config=configs/unimatch_folder.py --workdir=runs/unimatch_mine \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks \\
    --config.data.unlabeled_dir=data/unlabeled

config.objective_params holds every field of the objective (threshold, threshold_mode,
unlabeled_loss, feature_dropout, geometric, ...); config.data.strong_augment every field of the
photometric strong view (data.views.StrongView), config.data.strong_geometry of the geometric
one (data.views.AffineGrid, used with objective_params.geometric=True). The class count,
channels, normalisation and test split are inferred from the files, as in configs/folder.py.

This is UniMatch as published; measured_recipe() gives the settings the label-efficiency grid
measured best on scenes (configs/folder_semisup.py and configs/unimatch_scenes.py take them).
"""
from configs import fixmatch_folder
from segae_jax.training import objectives


def get_config():
  config = fixmatch_folder.get_config()   # Its data, pool share, batch and cross-entropy.
  config.data.strong_geometry = objectives.strong_geometry()
  config.objective = 'unimatch'
  config.objective_params = objectives.default_params('unimatch')
  return config


def measured_recipe(config):
  """`config` (a 'unimatch' config) with the settings tuned on the scenes' validation split
  (benchmarks/label_efficiency.py, tuning group 'unimatch', candidate 'data_views_adaptive';
  docs/results.md, issue 36): a strong view that keeps a uniform empty background empty (no
  contrast jitter, noise proportional to the pixel, UniMatch's blur scaled from its 512-pixel
  crops) and per-class confidence thresholds (FreeMatch, Wang et al., ICLR 2023), which let
  the few confident object pixels teach where one threshold leaves only background."""
  config.data.strong_augment.contrast = 0.0
  config.data.strong_augment.noise_mode = 'signal'
  config.data.strong_augment.blur_reference_size = 512
  config.objective_params.threshold_mode = 'class_adaptive'
  return config
