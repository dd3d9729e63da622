"""Training methods as registered objectives (config.objective, config.objective_params), one
module each, on the contract of base.py and the shared pieces of helpers.py:

  'supervised'   (supervised.py) config.loss on the labelled examples; with a pool, its terms
                 that need no masks (reconstruction, KL, sparsity) over every image of the step,
                 labelled and pool (the alpha-weighted joint objective of the SegAE). Without a
                 pool this is the training of every earlier release, bit for bit.
  'masked_rec'   (masked.py) as 'supervised', with the pool's images (or, for a model that does
                 not segment, every image) masked in patches; the reconstruction terms count the
                 hidden pixels only (MAE; SimMIM).
  'denoising'    (denoising.py) config.loss on the clean labelled examples, plus weight * the
                 noise-prediction error on the pool's noised images (Brempong et al., 2022).
  'supervised_strong'  (strong.py) as 'supervised', the labelled images seen through the strong
                 view and CutMix'ed with their masks: the teacher's augmentation without one.
  'fixmatch'     (teacher.py; alias 'mean_teacher') weak-to-strong pseudo-labels of an EMA
                 teacher, learnt on CutMix'ed strong views of the pool.
  'unimatch'     (unimatch.py) the weak view's pseudo-labels learnt on two strong views and on
                 the weak view's perturbed features (Yang et al., CVPR 2023).

Batches (data.inputs): the labelled examples ('image', 'segmentation', ...; every example when the
run has no pool) and, with an unlabelled pool, batch['unlabeled'] ({'image': the weak view, plus
the views the objective asked for, data.views}); segae_jax.batch declares them.

A method of the user's own: subclass Objective (or a method here), set `name` and `defaults`, and
register it with segae_jax.register_objective in a module config.plugins names (docs/api.md).
"""
# Each method's module registers it in OBJECTIVES on import.
from segae_jax.training.objectives import (denoising, masked, strong, supervised, teacher,
                                           unimatch)
from segae_jax.training.objectives.base import (OBJECTIVES, Objective, RunFacts, check_params,
                                                decode_pass, default_params, encode_pass,
                                                forward, fused_pass, make, no_pool_error,
                                                of_config, plain, pool_rngs, reconstruction_part,
                                                run_facts)
from segae_jax.training.objectives.denoising import Denoising
from segae_jax.training.objectives.helpers import (CUTMIX_DEFAULTS, channel_dropout,
                                                   class_thresholds, concat_parts,
                                                   confidence_mask, cutmix, ema,
                                                   pseudo_label_metrics, sigmoid_rampup,
                                                   strong_augment, strong_geometry,
                                                   swap_pairs)
from segae_jax.training.objectives.masked import MaskedReconstruction
from segae_jax.training.objectives.strong import StrongSupervised, mixed_labeled
from segae_jax.training.objectives.supervised import Supervised
from segae_jax.training.objectives.teacher import TeacherPseudoLabels
from segae_jax.training.objectives.unimatch import UniMatch
