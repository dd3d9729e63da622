"""Pretraining on your unlabelled images (dataset image_folder, no masks): configs/pretrain_scenes.py
(a U-Net encoder with a reconstruction decoder without skips, unet_ae, learning masked
reconstruction: 60% of the 8x8 patches hidden) on image_folder at 64x64, as configs/folder.py's
U-Net sees images; configs/finetune_folder.py then starts a U-Net from its encoder.

  python train.py --config=configs/pretrain_folder.py --workdir=runs/pretrain_mine \\
    --config.data.images_dir=data/unlabeled [--config.data.channels=1]
"""
from configs import pretrain_scenes, vae_folder


def get_config():
  config = pretrain_scenes.get_config()
  config.data = vae_folder.image_folder_data()
  config.data.image_size = (64, 64)
  config.eval_batch_size = 32
  return config
