"""Fine-tuning a U-Net on your labelled images (configs/folder.py) from the encoder of a
pretraining run on your unlabelled ones (configs/pretrain_folder.py):

  python train.py --config=configs/pretrain_folder.py --workdir=runs/pretrain_mine \\
    --config.data.images_dir=data/unlabeled
  python train.py --config=configs/finetune_folder.py --workdir=runs/finetune_mine \\
    --config.init_from=runs/pretrain_mine --config.data.images_dir=data/images \\
    --config.data.masks_dir=data/masks

The class count, channels, normalisation and test split are inferred from the files, as in
configs/folder.py (each overridable, e.g. --config.data.num_classes=3).
"""
from configs import folder


def get_config():
  config = folder.get_config()
  config.init_from = 'runs/pretrain_folder'
  config.init_checkpoint = 'latest'
  config.init_dont_load = ()   # Regexes of parameter paths to keep fresh, e.g. 'encoder/level0/.*'.
  return config
