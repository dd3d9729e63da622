"""Masked reconstruction on fashion_mnist_scenes: the SegAE of segae_scenes.py (reconstruction
decoder without skips) with 5% of the masks (500 scenes); the other 9,500 training scenes are an
unlabelled pool, 16 of every batch of 32, whose images the model sees with 60% of their 8x8
patches hidden and whose reconstruction loss counts the hidden pixels only. Sources: He et al.,
CVPR 2022 (MAE); Xie et al., CVPR 2022 (SimMIM); Woo et al., CVPR 2023 (ConvNeXt V2, ratio 0.6
for conv nets). docs/segmentation.md.

  python train.py --config=configs/masked_rec_scenes.py --workdir=runs/masked_rec_scenes
"""
from configs import segae_scenes
from segae_jax.training import objectives


def get_config():
  config = segae_scenes.get_config()
  config.labeled_fraction = 0.05
  config.data.unlabeled_per_batch = 16
  config.objective = 'masked_rec'
  # The objective's defaults (training/objectives/masked.py): ratio 0.6 of 8x8 patches (at
  # 64x64, as a 32-pixel patch at 224).
  config.objective_params = objectives.default_params('masked_rec')
  return config
