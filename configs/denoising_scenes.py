"""Denoising on fashion_mnist_scenes: the SegAE of segae_scenes.py with 5% of the masks (500
scenes) trained on them with cross-entropy, while its reconstruction head learns to predict the
noise eps of the 9,500 unlabelled scenes (16 of every batch of 32) seen as
x~ = (x + sigma * eps) / sqrt(1 + sigma^2), sigma = 0.2. Source: Brempong et al., "Denoising
Pretraining for Semantic Segmentation", CVPR-W 2022. docs/segmentation.md.

  python train.py --config=configs/denoising_scenes.py --workdir=runs/denoising_scenes
"""
import ml_collections

from configs import segae_scenes
from segae_jax.training import objectives


def get_config():
  config = segae_scenes.get_config()
  config.labeled_fraction = 0.05
  config.data.unlabeled_per_batch = 16
  # The reconstruction head predicts the noise: the labelled images get the segmentation term only.
  config.loss = ml_collections.ConfigDict({'seg_ce': 1.0})
  config.objective = 'denoising'
  config.objective_params = objectives.default_params('denoising')  # sigma 0.2, weight 1.
  return config
