"""Semi-supervised segmentation autoencoder on your own images: a few labelled images (images_dir
+ masks_dir, same file stems) and many unlabelled ones (unlabeled_dir, searched recursively).
L = alpha * L_rec + (1 - alpha) * L_seg: every image feeds the reconstruction term, only the
labelled ones the segmentation term; each global batch holds data.unlabeled_per_batch unlabelled
images, and epochs count over the labelled ones. Test metrics use the labelled test images.

  python train.py --config=configs/segae_folder_semisup.py --workdir=runs/semisup \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks \\
    --config.data.unlabeled_dir=data/unlabeled --config.alpha=0.5

The class count, channels, normalisation and test split are inferred from the files, as in
configs/folder.py (each overridable, e.g. --config.data.num_classes=3).
"""
from configs import folder, segae_scenes


def get_config():
  config = segae_scenes.get_config()   # The SegAE model and its alpha-weighted loss.
  config.data = folder.get_config().data
  config.data.image_size = (128, 128)
  config.data.unlabeled_dir = 'data/unlabeled'
  config.data.unlabeled_per_batch = 16  # Of each global batch of config.batch_size.
  config.batch_size = 32
  config.eval_batch_size = 32
  return config
