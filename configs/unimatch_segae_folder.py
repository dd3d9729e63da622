"""UniMatch with the autoencoder's reconstruction on top (configs/unimatch_folder.py with the
SegAE of configs/segae_folder_semisup.py): the U-Net encoder shared by a segmentation decoder
and a reconstruction decoder without skips, which reconstructs the labelled images and the pool's
weak views while the consistency terms train the segmentation:
L_x = seg_ce + 0.25 rec_mse_per_pixel (the joint SegAE's measured alpha 0.2, rescaled so that
the segmentation term keeps weight 1), L = (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2.

  python train.py --config=configs/unimatch_segae_folder.py --workdir=runs/unimatch_segae_mine \\
    --config.data.images_dir=data/images --config.data.masks_dir=data/masks \\
    --config.data.unlabeled_dir=data/unlabeled
"""
import ml_collections

from configs import unimatch_folder


def get_config():
  config = unimatch_folder.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'segae', 'features': (16, 32, 64, 128), 'norm': 'batch', 'upsample': 'transpose',
      'dropout': 0.0, 'seg_skips': True, 'rec_skips': False})
  config.loss = ml_collections.ConfigDict({'seg_ce': 1.0, 'rec_mse_per_pixel': 0.25})
  return config
