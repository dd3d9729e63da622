"""Sparse autoencoder: alpha * L_rec + (1 - alpha) * L_sparse with a KL sparsity penalty on a
sigmoid code (Ng, CS294A notes). `--config.alpha=0.9` re-weights both terms at once."""
import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.data.binarize = False
  config.model.name = 'sparse_ae'
  config.model.latent_dim = 128
  config.model.code_activation = 'sigmoid'
  config.alpha = 0.99
  config.loss = ml_collections.ConfigDict({
      'rec_mse': config.get_ref('alpha'),
      'sparsity_kl': 1.0 - config.get_ref('alpha'),
  })
  config.loss_params = ml_collections.ConfigDict({'sparsity_kl': {'target': 0.05}})
  return config
