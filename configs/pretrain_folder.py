"""Pretraining on your unlabelled images (dataset image_folder, no masks): a U-Net encoder with a
reconstruction decoder without skips (unet_ae) learns masked reconstruction (60% of the 8x8
patches hidden at 64x64); configs/finetune_folder.py then starts a U-Net from its encoder.

  python train.py --config=configs/pretrain_folder.py --workdir=runs/pretrain_mine \\
    --config.data.images_dir=data/unlabeled [--config.data.channels=1]
"""
import ml_collections

from configs import default, masked_rec_scenes, vae_folder


def get_config():
  config = default.get_config()
  config.data = vae_folder.image_folder_data()
  config.data.image_size = (64, 64)   # As configs/folder.py's U-Net sees them.
  config.model = ml_collections.ConfigDict({
      'name': 'unet_ae', 'features': (16, 32, 64, 128), 'norm': 'batch', 'upsample': 'transpose',
      'dropout': 0.0})
  config.loss = ml_collections.ConfigDict({'rec_mse_per_pixel': 1.0})
  config.objective = 'masked_rec'
  config.objective_params = masked_rec_scenes.masked_params()
  config.learning_rate = 3e-3
  config.batch_size = 32
  config.num_train_steps = 1200
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  config.eval_batch_size = 32
  config.num_pictures = 8
  return config
