"""Semi-supervised segmentation on your own images, with the recipe that measured best: a U-Net
trained on a few labelled images (images_dir + masks_dir) and, through weak-to-strong
consistency, on many unlabelled ones (unlabeled_dir, searched recursively; 16 of every batch of
32): configs/unimatch_folder.py (UniMatch, Yang et al., CVPR 2023) with measured_recipe(), the
strong view suited to a uniform background and class-adaptive confidence thresholds.

Measured (docs/results.md, "Weak-to-strong consistency at 5% and 1% of the masks";
benchmarks/label_efficiency.py): with 500 masks of fashion_mnist_scenes and 9,500 scenes
without, 3,000 steps, +5.0 test mIoU points over the same U-Net on the masks alone (95%
interval [+2.8, +7.2], 3 paired seeds), 46% of the gap to the same U-Net given every mask;
the EMA teacher this config used before (fixmatch, tau 0.8) gained +2.9 [+1.3, +4.5]. Those
arms saw flips alone; with folder.py's scale-crop as well (this config's weak view), which lifts
the reference, the gain is +2.4 [+0.6, +4.1] (3 paired seeds), 25% of that gap; with 100 masks,
+7.9 [+3.3, +12.5]. A step computes about twice a supervised step of 32 images (docs/results.md,
the cost of a step). The SegAE's reconstruction on top (configs/unimatch_segae_folder.py) added
+0.8 [-0.7, +2.2] at 5% and +1.1 [-2.0, +4.2] at 1%, intervals that span 0, for about a quarter
more time a step, so this recipe stays the plain U-Net.

  python train.py --config=configs/folder_semisup.py --workdir=runs/semisup_mine \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks \\
    --config.data.unlabeled_dir=data/unlabeled

The class count, channels, normalisation and test split are inferred from the files, as in
configs/folder.py (each overridable, e.g. --config.data.num_classes=3).
"""
from configs import unimatch_folder


def get_config():
  return unimatch_folder.measured_recipe(unimatch_folder.get_config())
