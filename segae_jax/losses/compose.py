"""Composes registered terms into one loss function with weights from the config."""
import functools
import inspect
from typing import Any, Callable, Dict, Mapping, Optional


from segae_jax.errors import UserInputError
from segae_jax.losses.base import LOSSES, LossFn


def _accepts_axis_name(term) -> bool:
  """Whether a registered term takes `axis_name` (this package's do; a user's term may not, and is
  then called without it: its means are per device under pmap)."""
  return 'axis_name' in inspect.signature(term).parameters


def make_loss_fn(weights: Mapping[str, float],
                 params: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 select: Optional[Callable[[str], bool]] = None) -> LossFn:
  """Composes registered terms: total = sum_name weights[name] * term_name(outputs, batch).

  Args:
    weights: {term name: weight}; terms with weight 0 are skipped.
    params: optional {term name: {keyword: value}} passed to that term (e.g. the sparsity target).
    select: keep only the terms for whose name this is true (e.g. the segmentation terms of a
      config); None keeps all. A selection may be empty: its function returns 0 and no metrics.

  Returns:
    A pure function (outputs, batch, axis_name=None) -> (total, metrics) whose metrics hold every
    active term (unweighted) and 'loss' (the weighted total). `axis_name` (pmap's axis) makes
    every term a mean over all devices (losses.base.axis_mean).

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
  if select is not None:
    active = {name: w for name, w in active.items() if select(name)}
  bound = {name: functools.partial(terms[name], **params.get(name, {})) for name in active}
  with_axis = {name for name in active if _accepts_axis_name(terms[name])}

  def loss_fn(outputs, batch, axis_name: Optional[str] = None):
    total = 0.0
    metrics = {}
    for name, weight in active.items():
      kwargs = {'axis_name': axis_name} if axis_name is not None and name in with_axis else {}
      value, term_metrics = bound[name](outputs, batch, **kwargs)
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
