"""Loss terms as pure functions, registered by name and composed with weights from the config.

Every term has the signature `term(outputs, batch, **params) -> (scalar, metrics)`:
  outputs: the model's output dict (see segae_jax.models), e.g. 'rec_logits', 'mean', 'logvar', 'z'.
  batch:   dict with 'image' [batch, height, width, channels] float32 in [0, 1] and optionally
           'valid' [batch] float32 (1 = real example, 0 = padding), which every term respects.
  returns: a float32 scalar (mean over the real examples) and {term_name: scalar}.

Segmentation terms read batch['segmentation'] (int32 [batch, height, width] class ids, with
`ignore_label` for unlabelled pixels) and outputs['seg_logits'] ([batch, height, width, classes]);
examples with batch['labeled'] == 0 (semi-supervised training) do not count for them.

Units: reconstruction terms are summed over pixels and channels, the KL over latent dimensions,
so per-image values are in nats; segmentation cross-entropy and focal loss are means over labelled
pixels (nats per pixel), Dice loss is in [0, 1].

A config composes terms as `config.loss = {'rec_bce': 1.0, 'kl': beta}`; `make_loss_fn` turns
that into one `(outputs, batch) -> (total, metrics)` function. A new loss is one decorated
function in this module (or anywhere that is imported), with no change to the train loop.
"""
import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from segae_jax.errors import UserInputError
from segae_jax.registry import Registry

Metrics = Dict[str, jnp.ndarray]
LossFn = Callable[[Mapping[str, jnp.ndarray], Mapping[str, jnp.ndarray]], Tuple[jnp.ndarray, Metrics]]

LOSSES: Registry = Registry('loss')


def batch_mean(per_example: jnp.ndarray, batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  """Mean of a [batch] array over the real examples (batch['valid'] == 1), or over all of them."""
  valid = batch.get('valid')
  if valid is None:
    return jnp.mean(per_example)
  return jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def _sum_per_example(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(x.reshape((x.shape[0], -1)), axis=-1)


def gaussian_kl(mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, in nats: [batch, ...] -> [batch].

  Analytic form from Kingma & Welling (2014), Appendix B:
  -1/2 * sum_j (1 + logvar_j - mean_j^2 - exp(logvar_j)), summed over every latent dimension
  (a vector latent [batch, latent] or a spatial one [batch, h, w, channels]).
  """
  return _sum_per_example(-0.5 * (1.0 + logvar - jnp.square(mean) - jnp.exp(logvar)))


@LOSSES.register('rec_bce')
def rec_bce(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Bernoulli negative log-likelihood -log p(x|z): sigmoid cross-entropy summed over pixels (nats)."""
  per_pixel = optax.sigmoid_binary_cross_entropy(outputs['rec_logits'], batch['image'])
  value = batch_mean(_sum_per_example(per_pixel), batch)
  return value, {'rec_bce': value}


@LOSSES.register('rec_mse')
def rec_mse(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Squared error of sigmoid(rec_logits) against the image, summed over pixels per image."""
  recon = jax.nn.sigmoid(outputs['rec_logits'])
  value = batch_mean(_sum_per_example(optax.squared_error(recon, batch['image'])), batch)
  return value, {'rec_mse': value}


@LOSSES.register('rec_mse_per_pixel')
def rec_mse_per_pixel(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Mean squared error of sigmoid(rec_logits) per pixel and channel (rec_mse / pixel count):
  on the scale of per-pixel segmentation losses, for the alpha-weighted joint objective."""
  recon = jax.nn.sigmoid(outputs['rec_logits'])
  per_image = jnp.mean(optax.squared_error(recon, batch['image']).reshape((recon.shape[0], -1)),
                       axis=-1)
  value = batch_mean(per_image, batch)
  return value, {'rec_mse_per_pixel': value}


@LOSSES.register('kl_per_pixel')
def kl_per_pixel(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """The analytic KL divided by the image's pixel count (height * width * channels): nats per
  pixel, on the scale of the per-pixel reconstruction and segmentation terms."""
  pixels = jnp.size(batch['image'][0])
  value = batch_mean(gaussian_kl(outputs['mean'], outputs['logvar']), batch) / pixels
  return value, {'kl_per_pixel': value}


@LOSSES.register('kl')
def kl(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """Analytic Gaussian KL of q(z|x) from the N(0, I) prior, nats per image."""
  value = batch_mean(gaussian_kl(outputs['mean'], outputs['logvar']), batch)
  return value, {'kl': value}


@LOSSES.register('sparsity_l1')
def sparsity_l1(outputs, batch) -> Tuple[jnp.ndarray, Metrics]:
  """L1 norm of the code z, summed over latent units, mean over images."""
  value = batch_mean(jnp.sum(jnp.abs(outputs['z']), axis=-1), batch)
  return value, {'sparsity_l1': value}


@LOSSES.register('sparsity_kl')
def sparsity_kl(outputs, batch, target: float = 0.05) -> Tuple[jnp.ndarray, Metrics]:
  """KL sparsity penalty sum_j KL(Bernoulli(target) || Bernoulli(rho_j)), nats.

  rho_j is unit j's mean activation over the (real examples of the) batch, so the code must lie in
  (0, 1): use a sigmoid code (SparseAutoencoder, code_activation='sigmoid'). Source: A. Ng,
  "Sparse autoencoder", CS294A lecture notes (2011), Sec. 3. Under pmap rho_j is each device's
  batch mean.
  """
  z = outputs['z']
  valid = batch.get('valid')
  if valid is None:
    rho = jnp.mean(z, axis=0)
  else:
    rho = jnp.sum(z * valid[:, None], axis=0) / jnp.maximum(jnp.sum(valid), 1.0)
  rho = jnp.clip(rho, 1e-6, 1.0 - 1e-6)
  value = jnp.sum(target * jnp.log(target / rho)
                  + (1.0 - target) * jnp.log((1.0 - target) / (1.0 - rho)))
  return value, {'sparsity_kl': value}


def make_loss_fn(weights: Mapping[str, float],
                 params: Optional[Mapping[str, Mapping[str, Any]]] = None) -> LossFn:
  """Composes registered terms: total = sum_name weights[name] * term_name(outputs, batch).

  Args:
    weights: {term name: weight}; terms with weight 0 are skipped.
    params: optional {term name: {keyword: value}} passed to that term (e.g. the sparsity target).

  Returns:
    A pure function (outputs, batch) -> (total, metrics) whose metrics hold every active term
    (unweighted) and 'loss' (the weighted total).

  Raises:
    UserInputError: an unknown term name, params for a term not in `weights`, or all weights zero.
  """
  weights = dict(weights)
  params = {k: dict(v) for k, v in (params or {}).items()}
  terms = {name: LOSSES.get(name) for name in weights}
  for name in params:
    if name not in weights:
      raise UserInputError(f'config.loss_params.{name}: {name!r} is not a term of config.loss '
                           f'({", ".join(sorted(weights))})')
  active = {name: w for name, w in weights.items() if w != 0}
  if not active:
    raise UserInputError(f'config.loss: every weight is zero ({weights}); give at least one '
                         'term a non-zero weight')
  bound = {name: functools.partial(terms[name], **params.get(name, {})) for name in active}

  def loss_fn(outputs, batch):
    total = 0.0
    metrics = {}
    for name, weight in active.items():
      value, term_metrics = bound[name](outputs, batch)
      total = total + weight * value
      metrics.update(term_metrics)
    metrics['loss'] = total
    return total, metrics

  return loss_fn


def beta_vae_weights(beta: float, reconstruction: str = 'rec_bce') -> Dict[str, float]:
  """The beta-VAE objective L_rec + beta * KL (Higgins et al., ICLR 2017) as term weights."""
  return {reconstruction: 1.0, 'kl': beta}


def alpha_weights(alpha: float, first: str, second: str) -> Dict[str, float]:
  """The weighted objective alpha * L_first + (1 - alpha) * L_second as term weights.

  Raises UserInputError unless 0 <= alpha <= 1.
  """
  if not 0.0 <= alpha <= 1.0:
    raise UserInputError(f'alpha must be in [0, 1], got {alpha}')
  return {first: alpha, second: 1.0 - alpha}


def _example_weights(batch) -> jnp.ndarray:
  """[batch] weights of examples that count for segmentation terms: real and labelled."""
  weights = jnp.ones(batch['segmentation'].shape[:1], jnp.float32)
  for key in ('valid', 'labeled'):
    if key in batch:
      weights = weights * batch[key].astype(jnp.float32)
  return weights


def _labels_and_keep(batch, num_classes: int, ignore_label: int):
  """([batch, h, w] int32 labels with ignored pixels set to 0, [batch, h, w] float32 1 = counts)."""
  labels = batch['segmentation'].astype(jnp.int32)
  keep = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  return jnp.where(keep, labels, 0), keep.astype(jnp.float32)


def _pixel_weights(batch, num_classes: int, class_weights, ignore_label: int):
  """([batch, h, w] float32 weights, [batch, h, w] int32 labels with ignored pixels set to 0)."""
  labels, keep = _labels_and_keep(batch, num_classes, ignore_label)
  weights = keep * _example_weights(batch)[:, None, None]
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
      raise UserInputError(f'class_weights has {class_weights.shape[0]} entries, the model '
                           f'predicts {num_classes} classes')
    weights = weights * class_weights[labels]
  return weights, labels


def _weighted_pixel_mean(per_pixel, weights):
  # Sum over all pixels of the batch divided by the total weight: PyTorch's CrossEntropyLoss
  # convention with class weights, so weights re-balance classes rather than rescale the loss.
  return jnp.sum(per_pixel * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


@LOSSES.register('seg_ce')
def seg_ce(outputs, batch, class_weights=None, ignore_label: int = 255):
  """Softmax cross-entropy of seg_logits against integer labels, nats per labelled pixel.

  class_weights: optional [num_classes] per-class weights; pixels equal to `ignore_label` (or
  outside [0, num_classes)) do not count.
  """
  logits = outputs['seg_logits']
  weights, labels = _pixel_weights(batch, logits.shape[-1], class_weights, ignore_label)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  value = _weighted_pixel_mean(ce, weights)
  return value, {'seg_ce': value}


@LOSSES.register('focal')
def focal(outputs, batch, gamma: float = 2.0, class_weights=None, ignore_label: int = 255):
  """Multi-class focal loss -(1 - p_t)^gamma * log p_t per labelled pixel (Lin et al., "Focal Loss
  for Dense Object Detection", ICCV 2017, Eq. 5; class_weights play the role of alpha_t).

  optax ships only the sigmoid (binary / multi-label) focal loss, so the softmax form is here.
  """
  logits = outputs['seg_logits']
  weights, labels = _pixel_weights(batch, logits.shape[-1], class_weights, ignore_label)
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
  per_pixel = -jnp.power(1.0 - jnp.exp(log_p), gamma) * log_p
  value = _weighted_pixel_mean(per_pixel, weights)
  return value, {'focal': value}


@LOSSES.register('dice')
def dice(outputs, batch, exclude_background: bool = False, smooth: float = 1.0,
         ignore_label: int = 255):
  """Soft multi-class Dice loss per class 1 - (I + s) / ((P + T) / 2 + s) with I = sum(p * t),
  P = sum(p), T = sum(t) over the image's labelled pixels (= 1 - 2I / (P + T) for s = 0),
  averaged over classes, per image, then over labelled images (Milletari et al., V-Net, 2016).

  This is optax.losses.dice_loss's formula (alpha = beta = 1/2), written here because optax's
  version has no ignore mask and, given probabilities, checks them with Python control flow that
  fails under jit. Ignored pixels are removed from prediction and target alike; with
  `exclude_background` class 0 does not count.
  """
  logits = outputs['seg_logits']
  num_classes = logits.shape[-1]
  labels, keep = _labels_and_keep(batch, num_classes, ignore_label)
  probs = jax.nn.softmax(logits) * keep[..., None]
  targets = jax.nn.one_hot(labels, num_classes) * keep[..., None]
  intersection = jnp.sum(probs * targets, axis=(1, 2))  # [batch, classes]
  total = jnp.sum(probs, axis=(1, 2)) + jnp.sum(targets, axis=(1, 2))
  per_class = 1.0 - (intersection + smooth) / (0.5 * total + smooth)
  per_image = jnp.mean(per_class[:, 1 if exclude_background else 0:], axis=-1)
  weights = _example_weights(batch)
  value = jnp.sum(per_image * weights) / jnp.maximum(jnp.sum(weights), 1e-8)
  return value, {'dice': value}
