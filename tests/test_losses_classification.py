"""segae_jax.losses.classification: class_ce and class_focal by hand (class weights in PyTorch's
weighted-CE convention and as a plain mean, padding), focal with gamma 0 equal to cross-entropy,
and the one focal function serving the segmentation term too."""
import numpy as np
import pytest

from segae_jax import losses
from segae_jax.errors import UserInputError

LN = np.log
# Softmax of (0, ln 3) is (1/4, 3/4); of (0, 0) is (1/2, 1/2); of (ln 3, 0) is (3/4, 1/4).
LOGITS = np.array([[0.0, LN(3.0)], [0.0, 0.0], [LN(3.0), 0.0]], np.float32)
LABELS = np.array([0, 1, 0], np.int32)
CE = np.array([LN(4.0), LN(2.0), LN(4.0 / 3.0)])  # -ln p_label of each example.
WEIGHTS = np.array([0.5, 3.0], np.float32)  # Example weights w_label: 0.5, 3, 0.5 (sum 4).


def _term(name, batch=None, **params):
  batch = {'label': LABELS, **(batch or {})}
  return losses.LOSSES.get(name)({'class_logits': LOGITS}, batch, **params)


def test_class_ce_hand_computed_with_and_without_class_weights():
  value, metrics = _term('class_ce')
  assert float(value) == pytest.approx(CE.mean(), rel=1e-5) and set(metrics) == {'class_ce'}
  weighted = 0.5 * CE[0] + 3.0 * CE[1] + 0.5 * CE[2]
  # PyTorch's CrossEntropyLoss(weight=w): divided by the total weight of the batch, 4.
  value, _ = _term('class_ce', class_weights=WEIGHTS)
  assert float(value) == pytest.approx(weighted / 4.0, rel=1e-5)
  # reduction 'mean' (the probe's weighted_ce): divided by the number of examples, 3.
  value, _ = _term('class_ce', class_weights=WEIGHTS, reduction='mean')
  assert float(value) == pytest.approx(weighted / 3.0, rel=1e-5)


def test_padding_does_not_count():
  valid = {'valid': np.array([1.0, 1.0, 0.0], np.float32)}
  value, _ = _term('class_ce', valid)
  assert float(value) == pytest.approx((CE[0] + CE[1]) / 2, rel=1e-5)
  value, _ = _term('class_ce', valid, class_weights=WEIGHTS)
  assert float(value) == pytest.approx((0.5 * CE[0] + 3.0 * CE[1]) / 3.5, rel=1e-5)
  value, _ = _term('class_ce', valid, class_weights=WEIGHTS, reduction='mean')
  assert float(value) == pytest.approx((0.5 * CE[0] + 3.0 * CE[1]) / 2, rel=1e-5)


def test_class_focal_hand_value_and_gamma_zero_is_class_ce():
  # FL = -(1 - p_t)^2 ln p_t: p_t = 1/4, 1/2, 3/4.
  focal = np.array([(3 / 4) ** 2 * LN(4.0), (1 / 2) ** 2 * LN(2.0), (1 / 4) ** 2 * LN(4 / 3)])
  value, metrics = _term('class_focal', gamma=2.0)
  assert float(value) == pytest.approx(focal.mean(), rel=1e-5) and set(metrics) == {'class_focal'}
  value, _ = _term('class_focal', gamma=2.0, class_weights=WEIGHTS)
  assert float(value) == pytest.approx((0.5 * focal[0] + 3 * focal[1] + 0.5 * focal[2]) / 4,
                                       rel=1e-5)
  for params in ({}, {'class_weights': WEIGHTS}, {'class_weights': WEIGHTS, 'reduction': 'mean'}):
    ce, _ = _term('class_ce', **params)
    fl, _ = _term('class_focal', gamma=0.0, **params)
    assert float(fl) == pytest.approx(float(ce), rel=1e-6), params


def test_one_focal_function_for_any_rank():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, (2, 3, 4)).astype(np.int32)
  per_pixel = losses.softmax_focal(logits, labels, 0.0)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(per_pixel, -np.take_along_axis(log_p, labels[..., None], -1)[..., 0],
                             rtol=1e-5)
  # The segmentation focal term (a mean over labeled pixels) agrees with it.
  seg, _ = losses.focal({'seg_logits': logits}, {'segmentation': labels}, gamma=2.0)
  assert float(seg) == pytest.approx(float(np.mean(losses.softmax_focal(logits, labels, 2.0))),
                                     rel=1e-5)


def test_composed_and_bad_input():
  loss_fn = losses.make_loss_fn({'class_ce': 1.0, 'class_focal': 0.5},
                                {'class_focal': {'gamma': 0.0}})
  total, metrics = loss_fn({'class_logits': LOGITS}, {'label': LABELS})
  assert float(total) == pytest.approx(1.5 * CE.mean(), rel=1e-5)
  assert set(metrics) == {'class_ce', 'class_focal', 'loss'}
  with pytest.raises(UserInputError, match=r'class_weights has shape \(3,\), the model predicts 2'):
    _term('class_ce', class_weights=np.ones(3, np.float32))
  with pytest.raises(UserInputError, match="reduction: unknown 'sum'; known: weighted_mean, mean"):
    _term('class_focal', class_weights=WEIGHTS, reduction='sum')
