"""The importance-sampled log-likelihood bound of a VAE (Burda, Grosse & Salakhutdinov,
"Importance Weighted Autoencoders", ICLR 2016, Eq. 8):

  log p(x) >= L_K = E[log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)],  z_k ~ q(z|x),

L_1 is the ELBO and L_K rises towards log p(x) as K grows; VAE papers report -L_K at K = 5,000
as the test negative log-likelihood. Here p(x|z) is the decoder's Bernoulli (the models'
`rec_bce` term), p(z) = N(0, I) and q(z|x) the encoder's diagonal Gaussian; x is the
reconstruction target of the run's own evaluation batches (binarised as the run evaluates).
The K samples are drawn in chunks, and the log-sum-exp accumulated over the chunks, so K = 5,000
needs the memory of one chunk.
"""
import math
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from segae_jax import batch as batch_lib
from segae_jax.errors import UserInputError
from segae_jax.losses import reconstruction

LOG_2PI = math.log(2.0 * math.pi)


def log_weights(model, variables, images: jnp.ndarray, targets: jnp.ndarray, key: jax.Array,
                num_samples: int) -> jnp.ndarray:
  """float32 [num_samples, batch]: log p(x|z_k) + log p(z_k) - log q(z_k|x) in nats, z_k drawn
  from q(z|images) by reparameterisation; images (the encoder's input) and targets (x, in
  {0, 1} or [0, 1]) float32 [batch, height, width, channels]."""
  mean, logvar = model.apply(variables, images, method=model.encode_distribution)
  eps = jax.random.normal(key, (num_samples,) + mean.shape, mean.dtype)
  z = mean + jnp.exp(0.5 * logvar) * eps
  logits = model.apply(variables, z.reshape((-1,) + mean.shape[1:]), method=model.decode)
  logits = logits.reshape((num_samples,) + targets.shape)
  log_px_z = -optax.sigmoid_binary_cross_entropy(logits, targets[None]).sum(axis=(2, 3, 4))
  log_pz = -0.5 * jnp.sum(z ** 2 + LOG_2PI, axis=-1)
  log_qz = -0.5 * jnp.sum(eps ** 2 + logvar + LOG_2PI, axis=-1)
  return log_px_z + log_pz - log_qz


def negative_elbo(model, variables, images: jnp.ndarray, targets: jnp.ndarray,
                  key: jax.Array) -> jnp.ndarray:
  """float32 [batch]: -ELBO per image (nats) as training computes it: the Bernoulli NLL of one
  z drawn from q(z|images) plus the analytic KL of q from N(0, I) (Kingma & Welling, Eq. 10)."""
  out = model.apply(variables, images, rngs={'reparam': key})
  rec = optax.sigmoid_binary_cross_entropy(out['rec_logits'], targets).sum(
      axis=batch_lib.example_axes(targets))
  return rec + reconstruction.gaussian_kl(out['mean'], out['logvar'])


_jitted_negative_elbo = jax.jit(negative_elbo, static_argnums=0)
# Compiled once per model, batch shape and chunk size (the model and the count are static).
_jitted_log_weights = jax.jit(log_weights, static_argnums=(0, 5))


def check(model, num_samples: int) -> None:
  """Raises UserInputError unless num_samples >= 1 and the model has a Gaussian posterior."""
  if num_samples < 1:
    raise UserInputError(f'--iw_samples={num_samples}: expected a number of samples >= 1')
  if not hasattr(model, 'encode_distribution'):
    raise UserInputError(f'--iw_samples: model {type(model).__name__} has no posterior q(z|x) '
                         '(the bound is for VAEs: config.model.name=vae)')


def iwae_nll(model, variables, images, targets, key: jax.Array, num_samples: int,
             chunk: int = 250) -> np.ndarray:
  """float64 [batch]: -L_K per image (nats), K = num_samples drawn in chunks of `chunk`.

  Raises:
    UserInputError: num_samples < 1, or a model without a Gaussian encoder (encode_distribution).
  """
  check(model, num_samples)
  total = None
  for i, start in enumerate(range(0, num_samples, chunk)):
    n = min(chunk, num_samples - start)
    w = np.asarray(_jitted_log_weights(model, variables, images, targets,
                                       jax.random.fold_in(key, i), n), np.float64)
    part = np.logaddexp.reduce(w, axis=0)
    total = part if total is None else np.logaddexp(total, part)
  return -(total - math.log(num_samples))


def evaluate_iwae(run, dataset, split: str, num_samples: int, batch_size: int,
                  key: jax.Array, num_images: Optional[int] = None,
                  chunk: int = 250) -> Dict[str, Any]:
  """The mean -L_K over `split`'s images (its first `num_images`, if given), in the run's
  evaluation batches (data.eval_batches with the run's preprocessing and seed, so binarised as
  the run evaluates; padding not counted).

  Returns:
    {'iwae_nll': mean -L_K, 'elbo_nll': mean -ELBO of the same images (negative_elbo), both in
    nats per image; 'iw_samples': K; 'images': the count}.

  Raises:
    UserInputError: see iwae_nll.
  """
  from segae_jax import data  # pylint: disable=import-outside-toplevel
  from segae_jax.losses import base  # pylint: disable=import-outside-toplevel
  source = getattr(dataset, split)
  total, elbo, count = 0.0, 0.0, 0
  num_images = len(source) if num_images is None else min(num_images, len(source))
  for i, batch in enumerate(data.eval_batches(source, batch_size, dataset.preprocess,
                                              seed=run.config.seed, num_examples=num_images)):
    targets, batch_key = base.reconstruction_target(batch), jax.random.fold_in(key, i)
    nll = iwae_nll(run.model, run.variables, batch['image'], targets, batch_key, num_samples,
                   chunk)
    single = np.asarray(_jitted_negative_elbo(run.model, run.variables, batch['image'], targets,
                                              jax.random.fold_in(batch_key, 2**31)))  # Own key.
    valid = np.asarray(batch['valid']) > 0
    total += float(nll[valid].sum())
    elbo += float(single[valid].sum())
    count += int(valid.sum())
  return {'iwae_nll': total / max(count, 1), 'elbo_nll': elbo / max(count, 1),
          'iw_samples': num_samples, 'images': count}
