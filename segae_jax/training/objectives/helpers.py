"""The pieces the methods share: the EMA, CutMix inside pairs, the teacher's confidence, the
sigmoid ramp-up, the reconstruction batch of several passes, and the strong view + CutMix box
(their defaults declared once: CUTMIX_DEFAULTS, strong_augment)."""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from segae_jax import batch as batch_lib, losses, models
from segae_jax.data import views as views_lib
from segae_jax.errors import UserInputError
from segae_jax.training.objectives.base import Objective, no_pool_error

Batch = Mapping[str, Any]


def view_defaults(view: type) -> Dict[str, Any]:
  """{field: default} of a data.views dataclass's settings, as declared there (not its in and
  out keys)."""
  keys = {f.name for f in dataclasses.fields(views_lib.InKeyOutKey)}
  return {f.name: f.default for f in dataclasses.fields(view) if f.name not in keys}


# config.objective_params' CutMix fields of every method that mixes: data.views.CutMixBox's
# defaults, as cutmix_<field>.
CUTMIX_DEFAULTS = {f'cutmix_{k}': v for k, v in view_defaults(views_lib.CutMixBox).items()}


def view_config(view: type, **overrides) -> ml_collections.ConfigDict:
  """The config section (view.config_key) of a configured data.views view: its defaults with
  `overrides`.

  Raises:
    UserInputError: a field the view does not have.
  """
  views_lib.check_fields(view, overrides, view.config_key)
  return ml_collections.ConfigDict({**view_defaults(view), **overrides})


def strong_augment(**overrides) -> ml_collections.ConfigDict:
  """config.data.strong_augment: data.views.StrongView's defaults with `overrides`."""
  return view_config(views_lib.StrongView, **overrides)


def strong_geometry(**overrides) -> ml_collections.ConfigDict:
  """config.data.strong_geometry: data.views.AffineGrid's defaults with `overrides` (the
  geometric strong view of 'unimatch' with objective_params.geometric)."""
  return view_config(views_lib.AffineGrid, **overrides)


def strong_views(strong_fields: Mapping[str, Any], params: Mapping[str, Any]) -> list:
  """[the strong view of config.data.strong_augment (`strong_fields`), the CutMix box of the
  objective's cutmix_* fields (`params`)]: what the teacher's pool and the strong baseline's
  labelled images are seen as."""
  return [views_lib.StrongView.from_config(strong_fields),
          views_lib.CutMixBox(params['cutmix_prob'], params['cutmix_min_area'],
                              params['cutmix_max_area'], params['cutmix_min_aspect'])]


def pair_multiple(params: Mapping[str, Any]) -> int:
  """2 when CutMix mixes pairs (each device's share must hold whole pairs), else 1."""
  return 2 if params['cutmix_prob'] > 0 else 1


def concat_parts(parts: Sequence[Batch]) -> Dict[str, jnp.ndarray]:
  """The reconstruction batch of several passes: 'image' (the inputs), 'target' (what each
  part reconstructs) and, if any part weights its pixels, 'target_weight' (0 = every pixel of
  that image counts; losses.reconstruction.pixel_weights)."""
  out = {'image': jnp.concatenate([p['image'] for p in parts])}
  if any('target' in p for p in parts):
    out['target'] = jnp.concatenate([losses.reconstruction_target(p) for p in parts])
  if any('target_weight' in p for p in parts):
    out['target_weight'] = jnp.concatenate([
        p.get('target_weight', jnp.zeros(batch_lib.pixels_shape(p['image']), jnp.float32))
        for p in parts])
  return out


def split_loss(facts) -> Tuple[Any, Any, bool]:
  """(the loss of config.loss's segmentation terms, the loss of its other terms, whether any
  other term weighs > 0): the labelled images take the first, every image of the step the
  second (reconstruction, KL: the SegAE's joint objective). `facts`: the run's RunFacts."""
  is_seg = lambda term: term in losses.SEGMENTATION_TERMS
  return (losses.make_loss_fn(facts.loss, facts.loss_params, select=is_seg),
          losses.make_loss_fn(facts.loss, facts.loss_params, select=lambda t: not is_seg(t)),
          any(w for t, w in facts.loss.items() if not is_seg(t)))


def sigmoid_rampup(step, rampup_steps: int) -> jnp.ndarray:
  """exp(-5 (1 - t)^2) with t = min(step / rampup_steps, 1): 0.0067 at step 0, 1 from
  rampup_steps on (Laine & Aila, ICLR 2017, Sec. 3.1; the mean teacher's ramp-up). 1 when
  rampup_steps is 0."""
  if rampup_steps <= 0:
    return jnp.float32(1.0)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
  return jnp.exp(-5.0 * jnp.square(1.0 - t))


def ema(teacher, student, decay: float):
  """decay * teacher + (1 - decay) * student, leaf by leaf (Tarvainen & Valpola 2017, Eq. 1)."""
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


def swap_pairs(x: jnp.ndarray) -> jnp.ndarray:
  """Examples (0, 1), (2, 3), ... swapped: each one's CutMix partner. [n, ...] with n even; a
  pair never spans two devices when each device holds an even share (checked by validation)."""
  return x.reshape((x.shape[0] // 2, 2) + x.shape[1:])[:, ::-1].reshape(x.shape)


def channel_dropout(x: jnp.ndarray, key: jax.Array, rate: float,
                    axis_name: Optional[str] = None) -> jnp.ndarray:
  """x [n, *spatial, c] with whole channels of each example zeroed with probability `rate` and
  the rest scaled by 1 / (1 - rate) (nn.Dropout2d: UniMatch's feature perturbation, Yang et
  al., CVPR 2023, Sec. 3.3). rate 0 returns x itself.

  Example i's channels are drawn from fold_in(key, i's index in the whole batch): with `key` the
  same on every device (the step's 'examples' stream) and pmap's `axis_name`, the draws are
  those of one device or sharded jit."""
  if rate <= 0:
    return x
  n = x.shape[0]
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(n))
  shape = (1,) * batch_lib.SPATIAL_RANK + (x.shape[-1],)
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, shape))(keys)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def confidence_mask(teacher_logits: jnp.ndarray, threshold: float):
  """(pseudo-labels int32 [..], confidence float32 [..], mask float32 [..]: 1 where the
  teacher's highest softmax probability is >= threshold) of logits [..., classes]."""
  probs = jax.nn.softmax(teacher_logits, axis=-1)
  confidence = jnp.max(probs, axis=-1)
  return (jnp.argmax(probs, axis=-1).astype(jnp.int32), confidence,
          (confidence >= threshold).astype(jnp.float32))


def class_thresholds(labels: jnp.ndarray, confidence: jnp.ndarray, threshold: float,
                     num_classes: int, axis_name: Optional[str] = None) -> jnp.ndarray:
  """Class-adaptive confidence thresholds, float32 [num_classes]: tau_c = threshold * m_c /
  max_c' m_c', m_c the mean confidence of the pixels predicted as class c (labels, confidence:
  [n, *S], from confidence_mask), over the whole batch (psum over `axis_name`: one answer under
  every strategy); a class nobody predicted keeps `threshold`.

  A class the model is still unsure of gets a lower threshold, so its pixels are learnt before
  the model is as sure of them as of the background: the self-adaptive class fairness of
  FreeMatch (Wang et al., ICLR 2023, Sec. 3.2, Eq. 6: tau_c = MaxNorm(p_c) * tau), with the
  class's learning status measured on the batch's pixels of that class instead of an EMA over
  the unlabelled set's class probabilities (whose pixel frequencies would set a background's
  threshold 30x a garment's)."""
  members = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  pixels = tuple(range(members.ndim - 1))
  total = jnp.sum(members * confidence[..., None], axis=pixels)
  count = jnp.sum(members, axis=pixels)
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  status = total / jnp.maximum(count, 1.0)
  status = status / jnp.maximum(jnp.max(status), 1e-8)
  return jnp.where(count > 0, threshold * status, threshold)


def pseudo_label_metrics(labels: jnp.ndarray, confident: jnp.ndarray, num_classes: int,
                         axis_name: Optional[str] = None,
                         truth: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
  """What a teacher teaches, per class c (float32 scalars, over every device's pool pixels):
    'confident_fraction/<c>': of the pixels pseudo-labelled c, the fraction confident;
  and where the pool's true masks are known (`truth` int32 [n, *S], the hidden masks of a
  labelled dataset; values outside [0, num_classes) do not count):
    'pseudo_accuracy/<c>': of the confident pixels pseudo-labelled c, the fraction truly c;
    'pseudo_coverage/<c>': of the pixels truly c, the fraction confidently labelled c;
    'pseudo_accuracy': of all confident pixels, the fraction labelled right.
  0 where a ratio has no pixels. labels, confident: [n, *S] from confidence_mask. Monitoring
  only: nothing here enters a loss."""
  predicted = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  kept = predicted * confident[..., None]
  pixels = tuple(range(predicted.ndim - 1))
  ratio = lambda num, den: losses.axis_mean(jnp.sum(num, axis=pixels), jnp.sum(den, axis=pixels),
                                            axis_name)
  values = {'confident_fraction': ratio(kept, predicted)}
  if truth is not None:
    true = jax.nn.one_hot(truth, num_classes, dtype=jnp.float32)  # All 0 outside the classes.
    known = jnp.sum(true, -1, keepdims=True)                       # 1 where the truth is a class.
    values['pseudo_accuracy'] = ratio(kept * true, kept * known)
    values['pseudo_coverage'] = ratio(kept * true, true)
  out = {f'{name}/{c}': v[c] for name, v in values.items() for c in range(num_classes)}
  if truth is not None:
    out['pseudo_accuracy'] = losses.axis_mean(jnp.sum(kept * true), jnp.sum(kept * known),
                                              axis_name)
  return out


def cutmix(box: jnp.ndarray, *arrays: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
  """CutMix inside pairs (swap_pairs): where box [n, h, w] is nonzero, example i takes its
  partner's values of every array ([n, h, w] or [n, h, w, c]: the strong view, the labels,
  the confidences or confident mask), the same box for all (French et al., BMVC 2020).
  Returns the mixed arrays in the order given."""
  inside = box > 0
  return tuple(jnp.where(inside.reshape(inside.shape + (1,) * (a.ndim - inside.ndim)),
                         swap_pairs(a), a) for a in arrays)


def check_reconstructs(objective: Objective) -> None:
  """Raises UserInputError unless the model reconstructs and the run has unlabelled images to
  give it: a pool, or a model that does not segment (every image is then unlabelled to it)."""
  facts, name = objective.facts, objective.name
  if not models.reconstructs(facts.model):
    raise UserInputError(f'config.objective={name!r} trains the reconstruction of a model with '
                         f'rec_logits; model {facts.model!r} has none (use segae, unet_ae, '
                         'vae_unet, ae or vae)')
  if facts.segments and not facts.has_pool:
    raise no_pool_error(f'config.objective={name!r} with the segmenting model {facts.model!r}')
