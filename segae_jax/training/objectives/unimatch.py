"""'unimatch': weak-to-strong consistency with two strong views and a feature-perturbed stream
(Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic Segmentation",
CVPR 2023; reference code LiheYoung/UniMatch).

Each pool image is seen three ways: its weak view (the preprocessed, augmented 'image'), two
strong views ('strong_1', 'strong_2', data.views.StrongView drawn independently), each CutMix'ed
with its own box ('cutmix_1', 'cutmix_2') between pairs of pool images, and the weak view's
encoder features and skips with half their channels dropped (feature_dropout), decoded once more
(models.layers.SegmentationModel's encode / decode, so every segmenting model takes part).

Passes: the labelled images, the weak views and both strong views run through the encoder as
one batch, and the labelled features, the dropped ones and the strong views' through the
decoder as one batch (base.fused_pass), each part normalised by BatchNorm with its own
statistics: what separate passes give, at the cost of one. The weak view's plain decode, read
only for its pseudo-labels, is a forward pass of its own (no backward pass is computed over it);
with a reconstruction term the decoder passes are grouped by what their losses read
(UniMatch.decoder_passes).

The pseudo-labels are the weak view's predictions where their confidence >= threshold
(threshold_mode 'fixed'), or >= a class-adaptive threshold (threshold_mode 'class_adaptive':
helpers.class_thresholds, after FreeMatch, Wang et al., ICLR 2023): with ema_decay 0 (UniMatch)
the student's own, from the same training-mode encoder pass as the perturbed stream, under
stop_gradient; with ema_decay > 0 an EMA teacher's, in inference mode (as 'fixmatch'). Every
unlabelled pass is scored by unlabeled_loss, a weighted sum of registered segmentation terms
(config.loss_params of each apply) with the unconfident pixels weighted 0 (batch
'pixel_weight'): 'seg_ce' divides by all pool pixels (UniMatch's normalisation), 'dice' is the
Dice of the confident pixels (UniMatch's unlabelled term on ACDC), 'balanced_ce' the mean over
classes of each class's confident pixels' cross-entropy (losses.segmentation).

  loss = (L_x + w(step) * (0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp)) / 2

with L_x config.loss on the labelled examples (its reconstruction terms, with a model that
reconstructs, over the labelled examples and the pool's weak views: the SegAE's joint objective
on top of the consistency) and w = unlabeled_weight * the sigmoid ramp-up
(UniMatch: 1, no ramp-up). Metrics: 'unlabeled_s1', '_s2', '_fp' (each pass's unlabelled loss),
'confident_fraction', 'unlabeled_weight', and what the teacher teaches per class
(helpers.pseudo_label_metrics: the confident fraction, and with config.data.monitor_hidden_masks
the pseudo-labels' accuracy and coverage against the pool's hidden masks), with 'threshold/<c>'
under class-adaptive thresholds.
"""
import dataclasses
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp

from segae_jax import batch as batch_lib, losses
from segae_jax.data import views as views_lib
from segae_jax.errors import UserInputError
from segae_jax.training.objectives.base import OBJECTIVES, fused_pass, pool_rngs
from segae_jax.training.objectives import geometry
from segae_jax.training.objectives.helpers import (channel_dropout, class_thresholds,
                                                   concat_parts, confidence_mask, cutmix,
                                                   pseudo_label_metrics, sigmoid_rampup,
                                                   split_loss, strong_views)
from segae_jax.training.objectives.teacher import TeacherPseudoLabels

STRONG = batch_lib.numbered('strong', 2)
BOXES = batch_lib.numbered('cutmix', 2)
GRIDS = batch_lib.numbered('grid', 2)
# UniMatch's weights of the two strong views and the perturbed-feature stream (Sec. 3.4).
WEIGHTS = {'s1': 0.25, 's2': 0.25, 'fp': 0.5}
THRESHOLD_MODES = ('fixed', 'class_adaptive')
# The key of the pool's hidden masks (config.data.monitor_hidden_masks): monitoring only.
TRUTH = 'hidden_segmentation'


@OBJECTIVES.register('unimatch')
class UniMatch(TeacherPseudoLabels):
  """Two strong views and a perturbed-feature stream of each pool image (module doc). Fields as
  'fixmatch''s (threshold, ema_decay, unlabeled_weight, rampup_fraction, evaluate, cutmix_*),
  at UniMatch's defaults (no EMA, no ramp-up), plus feature_dropout (the channel dropout rate of
  the perturbed stream), threshold_mode ('fixed' or 'class_adaptive'), unlabeled_loss
  ({registered segmentation term: weight}: 'seg_ce', 'dice', 'balanced_ce', ...) and geometric
  (each strong view also scaled, rotated and shifted as config.data.strong_geometry says,
  data.views.AffineGrid, its pseudo-labels and confidences warped alike: geometry.py)."""
  name = 'unimatch'
  defaults = {**TeacherPseudoLabels.defaults, 'ema_decay': 0.0, 'rampup_fraction': 0.0,
              'evaluate': 'student', 'feature_dropout': 0.5, 'threshold_mode': 'fixed',
              'geometric': False,
              'unlabeled_loss': {'seg_ce': 1.0, 'dice': 0.0, 'balanced_ce': 0.0}}

  def __init__(self, facts, params):
    super().__init__(facts, params)
    weights = {k: float(v) for k, v in dict(self.params['unlabeled_loss']).items() if v}
    self.pseudo_label_fn = losses.make_loss_fn(
        weights, {k: facts.loss_params.get(k, {}) for k in weights})
    self.seg_fn, self.other_fn, self.reconstructs = split_loss(facts)

  def check(self) -> None:
    super().check()
    where = 'config.objective_params'
    views_lib.check_range(f'{where}.feature_dropout', self.params['feature_dropout'], 0.0, 1.0,
                          high_open=True)
    if self.params['threshold_mode'] not in THRESHOLD_MODES:
      raise UserInputError(f'{where}.threshold_mode={self.params["threshold_mode"]!r}: expected '
                           f'one of {", ".join(THRESHOLD_MODES)}')
    terms = dict(self.params['unlabeled_loss'])
    for term, weight in terms.items():
      if term not in losses.SEGMENTATION_TERMS:
        raise UserInputError(f'{where}.unlabeled_loss.{term}: expected a segmentation term '
                             f'({", ".join(losses.SEGMENTATION_TERMS)})')
      views_lib.check_range(f'{where}.unlabeled_loss.{term}', weight, 0.0, 1e6)
    if not any(terms.values()):
      raise UserInputError(f'{where}.unlabeled_loss={terms!r}: expected a term with weight > 0')

  def views(self):
    strong, box = strong_views(self.facts.strong_augment, self.params)
    grid = (views_lib.AffineGrid.from_config(self.facts.strong_geometry)
            if self.params['geometric'] else None)
    out = []
    for strong_key, box_key, grid_key in zip(STRONG, BOXES, GRIDS):
      out += [dataclasses.replace(strong, outkey=strong_key),
              dataclasses.replace(box, outkey=box_key)]
      if grid is not None:  # After the box: the views before it draw what they drew without.
        out.append(dataclasses.replace(grid, outkey=grid_key))
    return {'unlabeled': out}

  def passes(self, params, state, batch, rngs, axis_name) -> Tuple[Dict[str, Any], Any]:
    """({'labeled', 'student', 'fp', 's1', 's2': the student's outputs}, the batch statistics
    after): the streams of the step in one encoder and one decoder pass (base.fused_pass),
    each normalised with its own statistics and the labelled one alone updating the running
    ones, as separate passes would.

    'student' (the weak view's plain decode) is there when needed (decoder_passes): with a
    reconstruction term, or without an EMA teacher. 'fp' decodes the weak view's features with
    whole channels dropped, drawn per pool example from the step's 'examples' stream (the same
    under every strategy). 's1', 's2' are the two strong views (strong_image)."""
    pool = batch['unlabeled']
    images = [batch['image'], pool['image']] + [self.strong_image(pool, i)
                                                for i in range(len(STRONG))]
    encoded, stats = fused_pass(self.model, state, params, [(x,) for x in images], 'encode',
                                rngs)
    (features, skips), weak = encoded[0], encoded[1]
    keys = jax.random.split(pool_rngs(rngs)['examples'], len(weak[1]) + 1)
    drop = lambda x, key: channel_dropout(x, key, self.params['feature_dropout'], axis_name)
    streams = {'labeled': (features, skips),
               'fp': (drop(weak[0], keys[0]), [drop(s, k) for s, k in zip(weak[1], keys[1:])]),
               's1': encoded[2], 's2': encoded[3],
               # Differentiated only for a reconstruction term of the weak views.
               'student': weak if self.reconstructs else jax.lax.stop_gradient(weak)}
    outputs, after = {}, None
    for i, group in enumerate(self.decoder_passes()):
      decoded, group_stats = fused_pass(self.model, state, params, [streams[k] for k in group],
                                        'decode', pool_rngs(rngs, i) if i else rngs, stats)
      outputs.update(zip(group, decoded))
      after = group_stats if i == 0 else after  # The labelled part's pass.
    return outputs, after

  def decoder_passes(self) -> List[List[str]]:
    """The streams each decoder pass runs, the labelled one's first. What a pass computes that
    no loss reads is computed anyway when it shares the pass with what one reads, so: without
    a reconstruction term, the weak view's plain decode (read for its pseudo-labels only, under
    stop_gradient) is a forward pass of its own; with one, it joins the labelled part's pass
    (both reconstruct) and the other streams, whose reconstruction nothing reads, run apart."""
    if self.reconstructs:
      return [['labeled', 'student'], ['fp', 's1', 's2']]
    return [['labeled', 'fp', 's1', 's2']] + ([['student']] if self.params['ema_decay'] == 0
                                              else [])

  def weak_labels(self, state, pool, outputs, rngs, axis_name) -> Dict[str, jnp.ndarray]:
    """pseudo_labels of the weak view: the EMA teacher's in inference mode (ema_decay > 0), or
    the student's own plain decode from the step's training-mode pass (UniMatch)."""
    if self.params['ema_decay'] > 0:
      logits = state.apply_fn(self.teacher_variables(state), pool['image'], train=False,
                              rngs=pool_rngs(rngs))['seg_logits']
    else:
      logits = outputs['student']['seg_logits']
    return self.pseudo_labels(logits, axis_name)

  def pseudo_labels(self, logits: jnp.ndarray, axis_name) -> Dict[str, jnp.ndarray]:
    """{'labels', 'confident', 'thresholds' (per class)} of the weak view's logits, confident
    where the confidence reaches the threshold of the pixel's class (threshold_mode)."""
    logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
    labels, confidence, _ = confidence_mask(logits, self.params['threshold'])
    num_classes = logits.shape[-1]
    thresholds = jnp.full((num_classes,), self.params['threshold'], jnp.float32)
    if self.params['threshold_mode'] == 'class_adaptive':
      thresholds = class_thresholds(labels, confidence, self.params['threshold'], num_classes,
                                    axis_name)
    confident = (confidence >= thresholds[labels]).astype(jnp.float32)
    return {'labels': labels, 'confident': confident, 'thresholds': thresholds}

  def monitor(self, weak, pool, axis_name) -> Dict[str, jnp.ndarray]:
    """The per-class pseudo-label figures (helpers.pseudo_label_metrics), and the thresholds
    under threshold_mode 'class_adaptive'."""
    num_classes = weak['thresholds'].shape[0]
    out = pseudo_label_metrics(weak['labels'], weak['confident'], num_classes, axis_name,
                               pool.get(TRUTH))
    if self.params['threshold_mode'] == 'class_adaptive':
      out.update({f'threshold/{c}': weak['thresholds'][c] for c in range(num_classes)})
    return out

  def labeled_loss(self, outputs, batch, student, axis_name):
    """(L_x, its metrics): config.loss's segmentation terms on the labelled examples; its other
    terms (reconstruction, KL) over the labelled examples and the pool's weak views, the joint
    objective of a SegAE on top of the consistency (a model with rec_logits: unet_ae, segae)."""
    if not self.reconstructs:
      return self.loss_fn(outputs, batch, axis_name)
    supervised, metrics = self.seg_fn(outputs, batch, axis_name)
    both = {k: jnp.concatenate([outputs[k], student[k]]) for k in set(outputs) & set(student)}
    other, other_metrics = self.other_fn(
        both, concat_parts([batch, {'image': batch['unlabeled']['image']}]), axis_name)
    return supervised + other, {**metrics, **other_metrics}

  def strong_image(self, pool, index: int) -> jnp.ndarray:
    """Strong view `index` of the pool images, [n, h, w, c]: warped by its grid (geometric:
    bilinear), then CutMix'ed in pairs with its box."""
    image = pool[STRONG[index]]
    if self.params['geometric']:
      image = geometry.warp_image(image, pool[GRIDS[index]])
    return cutmix(pool[BOXES[index]], image)[0]

  def strong_targets(self, pool, weak, index: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(pseudo-labels, confident) of strong view `index`: the weak view's moved as its image
    was (geometric: order 0, nothing confident that came from outside the weak view), then
    CutMix'ed with the same box."""
    labels, confident = weak['labels'], weak['confident']
    if self.params['geometric']:
      grid = pool[GRIDS[index]]
      labels = geometry.warp_nearest(labels, grid)
      confident = geometry.warp_nearest(confident, grid) * geometry.inside(grid)
    return cutmix(pool[BOXES[index]], labels, confident)

  def loss(self, params, state, batch, rngs, axis_name):
    pool = batch['unlabeled']
    outputs, stats = self.passes(params, state, batch, rngs, axis_name)
    weak = self.weak_labels(state, pool, outputs, rngs, axis_name)
    supervised, metrics = self.labeled_loss(outputs['labeled'], batch, outputs.get('student'),
                                            axis_name)
    unlabeled = 0.0
    for i, part in enumerate(('s1', 's2', 'fp')):
      labels, confident = (self.strong_targets(pool, weak, i) if part != 'fp'
                           else (weak['labels'], weak['confident']))
      value, _ = self.pseudo_label_fn(
          outputs[part],
          {'image': pool['image'], 'segmentation': labels, 'pixel_weight': confident},
          axis_name)
      metrics[f'unlabeled_{part}'] = value
      unlabeled = unlabeled + WEIGHTS[part] * value
    metrics['confident_fraction'] = jnp.mean(weak['confident'])
    metrics.update(self.monitor(weak, pool, axis_name))
    metrics['unlabeled_weight'] = (self.params['unlabeled_weight']
                                   * sigmoid_rampup(state.step, self.rampup_steps))
    metrics['loss'] = (supervised + metrics['unlabeled_weight'] * unlabeled) / 2
    return metrics['loss'], metrics, stats
