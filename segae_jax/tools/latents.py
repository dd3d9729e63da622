"""The latent codes of a trained autoencoder or VAE: jitted encode/decode over whole splits.

Shared by `segae_jax.tools.generate` (pictures of the code space), `segae_jax.tools.compress`
(the codes as a compressed image format) and `segae_jax.tools.probe`. Codes are the
deterministic ones: the posterior mean for the VAE (`VAE.encode`), the code itself for the AE and
sparse AE (`Autoencoder.encode`).
"""
import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from segae_jax import data, models
from segae_jax.data import batching
from segae_jax.errors import UserInputError


@dataclasses.dataclass
class SplitCodes:
  """Codes of every example of a split, in split order.

  mean:   float32 [n, latent_dim], the code (VAE: posterior mean).
  logvar: float32 [n, latent_dim] posterior log-variance for a VAE, else None.
  images: float32 [n, h, w, c] in [0, 1], the grayscale targets (the pipeline's 'clean_image'
          when it binarises the encoder's input, else 'image'); None unless asked for.
  """
  mean: np.ndarray
  logvar: Optional[np.ndarray] = None
  images: Optional[np.ndarray] = None


def require_autoencoder(run) -> None:
  """Raises UserInputError unless the restored run is an AE, sparse AE or VAE."""
  if not isinstance(run.model, models.Autoencoder):
    raise UserInputError(f'the run holds a {run.config.model.name!r} model; this command needs an '
                         'autoencoder with a latent code (model ae, sparse_ae or vae)')


class LatentModel:
  """Jitted encode and decode of a restored AE/VAE run (`common.TrainedRun`).

  Raises:
    UserInputError: the run's model is not an autoencoder.
  """

  def __init__(self, run):
    require_autoencoder(run)
    self.run = run
    model = run.model
    self.is_vae = isinstance(model, models.VAE)
    self.latent_dim = int(model.latent_dim)
    self.image_shape = tuple(run.image_shape)
    method = 'encode_distribution' if self.is_vae else 'encode'
    self._encode = jax.jit(lambda v, x: model.apply(v, x, method=method))
    self._decode = jax.jit(lambda v, z: jax.nn.sigmoid(model.apply(v, z, method='decode')))
    self._sample = jax.jit(lambda v, key, n: model.apply(v, key, n, method='sample'),
                           static_argnums=2)

  def encode(self, images: np.ndarray):
    """Images float32 [n, h, w, c] in [0, 1] -> (code [n, latent], logvar [n, latent] or None)."""
    out = self._encode(self.run.variables, np.asarray(images, np.float32))
    if self.is_vae:
      return np.asarray(out[0]), np.asarray(out[1])
    return np.asarray(out), None

  def decode(self, z: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Codes float [n, latent] -> images float32 [n, h, w, c] in [0, 1] (Bernoulli means /
    sigmoid of the decoder's logits), in chunks of `batch_size` (the last one padded, so one
    compiled shape)."""
    return batching.map_batched(lambda chunk: self._decode(self.run.variables, chunk),
                                np.asarray(z, np.float32), batch_size)

  def sample(self, key: jax.Array, num: int) -> np.ndarray:
    """VAE only: `num` images decoded from z ~ N(0, I), float32 [num, h, w, c] in [0, 1]."""
    if not self.is_vae:
      raise UserInputError(f'samples need a VAE (a prior to sample from); the run holds a '
                           f'{self.run.config.model.name!r} model')
    return np.asarray(self._sample(self.run.variables, key, int(num)))

  def encode_split(self, source, preprocess, batch_size: int, seed: int,
                   keep_images: bool = False) -> SplitCodes:
    """Encodes every example of `source` through `preprocess` (the dataset's own, so inputs look
    like training inputs, e.g. binarised with the seeded draws of `train.evaluate` for the same
    seed and batch size)."""
    means, logvars, images = [], [], []
    for batch in data.eval_batches(source, batch_size, preprocess, seed=seed):
      valid = batch['valid'] > 0
      mean, logvar = self.encode(batch['image'])
      means.append(mean[valid])
      if logvar is not None:
        logvars.append(logvar[valid])
      if keep_images:
        images.append(np.asarray(batch.get('clean_image', batch['image']))[valid])
    return SplitCodes(mean=np.concatenate(means),
                      logvar=np.concatenate(logvars) if logvars else None,
                      images=np.concatenate(images) if keep_images else None)

  def read_examples(self, source, preprocess, indices: Sequence[int], seed: int):
    """The preprocessed examples `indices` of `source`: (encoder inputs, grayscale images), both
    float32 [len(indices), h, w, c] in [0, 1]."""
    batch = preprocess(data.stack_examples(source.__getitems__([int(i) for i in indices])),
                       data.eval_rngs(seed, indices))
    return (np.asarray(batch['image'], np.float32),
            np.asarray(batch.get('clean_image', batch['image']), np.float32))
