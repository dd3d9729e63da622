"""'denoising': config.loss on the clean labelled examples, plus weight * the noise-prediction
error on the pool's images noised as x~ = (x + sigma * eps) / sqrt(1 + sigma^2) (Brempong et al.,
CVPR-W 2022); for a model that does not segment, that error on every image is the whole loss."""
from typing import Dict

import jax.numpy as jnp

from segae_jax import losses
from segae_jax.data import views as views_lib
from segae_jax.training.objectives.base import (OBJECTIVES, Batch, Objective, forward, pool_rngs,
                                                reconstruction_part)
from segae_jax.training.objectives.helpers import check_reconstructs


@OBJECTIVES.register('denoising')
class Denoising(Objective):
  """config.loss on the clean labelled images plus `weight` * the noise-prediction error
  (losses.noise_mse) on the unlabelled ones, noised as x~ = (x + sigma * eps) / sqrt(1 + sigma^2)
  with eps ~ N(0, I) drawn per example (data.views.GaussianNoise); the reconstruction head's raw
  output predicts eps (Brempong et al., "Denoising Pretraining for Semantic Segmentation",
  CVPR-W 2022, Sec. 3: sigma around 0.2, predicting the noise). For a model that does not
  segment (pretraining), the noise error on every image is the whole loss.

  The reconstruction head predicts eps here, not the image: give config.loss no reconstruction
  term for the labelled images (configs/denoising_*.py: seg_ce alone).
  """
  name = 'denoising'
  defaults = {'sigma': 0.2, 'weight': 1.0}

  def check(self) -> None:
    check_reconstructs(self)
    views_lib.check_range('config.objective_params.sigma', self.params['sigma'], 0.0, 10.0,
                          low_open=True)
    views_lib.check_range('config.objective_params.weight', self.params['weight'], 0.0, 1e6)

  def views(self):
    return {reconstruction_part(self.facts): [views_lib.GaussianNoise()]}

  def noised(self, part: Batch) -> Dict[str, jnp.ndarray]:
    sigma = self.params['sigma']
    image = (part['image'] + sigma * part['noise']) / jnp.sqrt(1.0 + sigma ** 2)
    return {'image': image, 'target': part['noise']}

  def loss(self, params, state, batch, rngs, axis_name):
    weight = self.params['weight']
    pool = batch.get('unlabeled')
    if pool is None:  # A model that does not segment: every image is noised.
      noised = self.noised(batch)
      outputs, stats = forward(state, params, noised['image'], rngs)
      value, metrics = losses.noise_mse(outputs, noised, axis_name)
      metrics['loss'] = weight * value
      return metrics['loss'], metrics, stats
    outputs, stats = forward(state, params, batch['image'], rngs)
    supervised, metrics = self.loss_fn(outputs, batch, axis_name)
    noised = self.noised(pool)
    pool_outputs, _ = forward(state, params, noised['image'], pool_rngs(rngs))
    value, noise_metrics = losses.noise_mse(pool_outputs, noised, axis_name)
    metrics.update(noise_metrics)
    metrics['loss'] = supervised + weight * value
    return metrics['loss'], metrics, stats
