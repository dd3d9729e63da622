"""FixMatch-style pseudo-labelling with a mean teacher and CutMix on fashion_mnist_scenes: the
U-Net of unet_scenes.py with 5% of the masks (500 scenes); the other 9,500 training scenes are an
unlabelled pool, 16 of every batch of 32. The teacher (an EMA of the student, decay 0.99) labels
the weak view of each pool scene where it is >= 95% confident; the student learns those labels on
the strong view (brightness / contrast / gamma, blur, noise), CutMix'ed between pairs of scenes;
the unlabelled term ramps up over the first 20% of the steps. Sources: Sohn et al., NeurIPS 2020
(FixMatch); Tarvainen & Valpola, NeurIPS 2017 (mean teacher); French et al., BMVC 2020 (CutMix
for segmentation); Yang et al., CVPR 2023 (UniMatch's settings). docs/segmentation.md.

  python train.py --config=configs/fixmatch_scenes.py --workdir=runs/fixmatch_scenes \\
    [--config.objective_params.threshold=0.9 --config.objective_params.ema_decay=0]
"""
import ml_collections

from configs import unet_scenes


def strong_augment() -> ml_collections.ConfigDict:
  """config.data.strong_augment: the strong view of the pool's images (data/views.py)."""
  return ml_collections.ConfigDict({
      'brightness': 0.5, 'contrast': 0.5, 'gamma': 0.3, 'jitter_prob': 0.8,
      'blur_prob': 0.5, 'blur_sigma': (0.1, 2.0), 'noise_prob': 0.5, 'noise_std': 0.1})


def fixmatch_params() -> ml_collections.ConfigDict:
  """config.objective_params of 'fixmatch' / 'mean_teacher' (training/objectives.py)."""
  return ml_collections.ConfigDict({
      'ema_decay': 0.99,           # 0: the student is its own teacher (FixMatch as published).
      'threshold': 0.95,           # Pseudo-labels where the teacher's confidence >= this.
      'unlabeled_weight': 1.0,     # lambda_u, reached after the ramp-up.
      'rampup_fraction': 0.2,      # Of num_train_steps.
      'evaluate': 'teacher',       # Which variables evaluation and the tools use.
      'cutmix_prob': 0.5, 'cutmix_min_area': 0.02, 'cutmix_max_area': 0.4,
      'cutmix_min_aspect': 0.3,
  })


def get_config():
  config = unet_scenes.get_config()
  config.labeled_fraction = 0.05
  config.data.unlabeled_per_batch = 16   # Of each batch of 32: the hidden masks' scenes.
  config.data.strong_augment = strong_augment()
  config.objective = 'fixmatch'
  config.objective_params = fixmatch_params()
  return config
