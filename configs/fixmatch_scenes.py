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

config.objective_params holds every field of the objective, at the defaults its module declares
(segae_jax/training/objectives/teacher.py): ema_decay (0: the student is its own teacher, FixMatch
as published), threshold (pseudo-labels where the teacher's confidence >= it), unlabeled_weight
(lambda_u, reached after the ramp-up), rampup_fraction (of num_train_steps), evaluate ('teacher'
or 'student': the variables evaluation and the tools use) and the cutmix_* box;
config.data.strong_augment every field of data.views.StrongView, at its defaults.
"""
from configs import unet_scenes
from segae_jax.training import objectives


def get_config():
  config = unet_scenes.get_config()
  config.labeled_fraction = 0.05
  config.data.unlabeled_per_batch = 16   # Of each batch of 32: the hidden masks' scenes.
  config.data.strong_augment = objectives.strong_augment()
  config.objective = 'fixmatch'
  config.objective_params = objectives.default_params('fixmatch')
  return config
