"""Composes registered terms into one loss function with weights from the config."""
import functools
from typing import Any, Dict, Mapping, Optional


from segae_jax.errors import UserInputError
from segae_jax.losses.base import LOSSES, LossFn


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
