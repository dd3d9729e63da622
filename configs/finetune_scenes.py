"""Fine-tuning on 5% of the masks (500 scenes, the others unused): the U-Net of unet_scenes.py
started from the encoder of a pretraining run (configs/pretrain_scenes.py; its decoder is new,
its optimizer state fresh). Run the pretraining first, into the workdir init_from names:

  python train.py --config=configs/pretrain_scenes.py --workdir=runs/pretrain_scenes
  python train.py --config=configs/finetune_scenes.py --workdir=runs/finetune_scenes \\
    [--config.init_from=runs/pretrain_scenes --config.init_checkpoint=latest]
"""
from configs import unet_scenes


def get_config():
  config = unet_scenes.get_config()
  config.labeled_fraction = 0.05
  config.labeled_only = True
  config.init_from = 'runs/pretrain_scenes'
  config.init_checkpoint = 'latest'
  config.init_dont_load = ()   # Regexes of parameter paths to keep fresh, e.g. 'encoder/level0/.*'.
  return config
