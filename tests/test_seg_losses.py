"""Segmentation losses and metrics against hand-computed values."""
import jax.numpy as jnp
import numpy as np
import pytest

from segae_jax import losses
from segae_jax.inference import scoring
from segae_jax.training import metrics
from segae_jax.errors import UserInputError

# One image 1x3 pixels, 2 classes; labels [0, 1, ignore].
LOGITS = np.array([[[[2.0, 0.0], [1.0, 3.0], [5.0, -5.0]]]], np.float32)  # [1, 1, 3, 2]
LABELS = np.array([[[0, 1, 255]]])


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_seg_ce_ignore_label_and_class_weights():
  lp = _log_softmax(LOGITS.astype(np.float64))[0, 0]
  ce0, ce1 = -lp[0, 0], -lp[1, 1]  # The ignored pixel never counts.
  value, _ = losses.seg_ce({'seg_logits': jnp.asarray(LOGITS)}, {'segmentation': LABELS})
  np.testing.assert_allclose(value, (ce0 + ce1) / 2, rtol=1e-6)
  # Weights [1, 3]: (1 * ce0 + 3 * ce1) / (1 + 3), PyTorch's CrossEntropyLoss(weight=...) mean.
  value, _ = losses.seg_ce({'seg_logits': jnp.asarray(LOGITS)}, {'segmentation': LABELS},
                           class_weights=[1.0, 3.0])
  np.testing.assert_allclose(value, (ce0 + 3 * ce1) / 4, rtol=1e-6)
  with pytest.raises(UserInputError, match='class_weights has 3 entries'):
    losses.seg_ce({'seg_logits': jnp.asarray(LOGITS)}, {'segmentation': LABELS},
                  class_weights=[1.0, 1.0, 1.0])


def test_unlabeled_and_padding_examples_do_not_count():
  logits = jnp.asarray(np.concatenate([LOGITS, -LOGITS]))  # Second image: very wrong.
  labels = np.concatenate([LABELS, LABELS])
  alone, _ = losses.seg_ce({'seg_logits': logits[:1]}, {'segmentation': labels[:1]})
  for key in ('labeled', 'valid'):
    value, _ = losses.seg_ce({'seg_logits': logits},
                             {'segmentation': labels, key: jnp.array([1.0, 0.0])})
    np.testing.assert_allclose(value, alone, rtol=1e-6)
  nothing, _ = losses.seg_ce({'seg_logits': logits},
                             {'segmentation': labels, 'labeled': jnp.zeros(2)})
  assert float(nothing) == 0.0  # A batch without masks contributes no segmentation loss.


def test_focal_reduces_to_ce_at_gamma_0_and_by_hand():
  ce, _ = losses.seg_ce({'seg_logits': jnp.asarray(LOGITS)}, {'segmentation': LABELS})
  f0, _ = losses.focal({'seg_logits': jnp.asarray(LOGITS)}, {'segmentation': LABELS}, gamma=0.0)
  np.testing.assert_allclose(f0, ce, rtol=1e-6)
  p = np.exp(_log_softmax(LOGITS.astype(np.float64))[0, 0])
  pt = np.array([p[0, 0], p[1, 1]])
  expected = np.mean(-(1 - pt) ** 2 * np.log(pt))
  f2, _ = losses.focal({'seg_logits': jnp.asarray(LOGITS)}, {'segmentation': LABELS}, gamma=2.0)
  np.testing.assert_allclose(f2, expected, rtol=1e-5)


def test_dice_on_a_tiny_mask():
  # 2x2 image, 2 classes; near-one-hot predictions: class 1 predicted on 2 pixels, true on 1.
  big = 30.0
  logits = np.array([[[[big, 0], [0, big]], [[0, big], [big, 0]]]], np.float32)  # pred [[0,1],[1,0]]
  labels = np.array([[[0, 1], [0, 0]]])
  # optax's soft Dice with smooth s: 1 - (I + s) / (I + (P - I) / 2 + (T - I) / 2 + s), i.e.
  # 2I / (P + T) when s = 0. Class 0: P=2, T=3, I=2 -> 1 - 3 / 3.5; class 1: P=2, T=1, I=1 ->
  # 1 - 2 / 2.5; mean over classes.
  expected = ((1 - 3 / 3.5) + (1 - 2 / 2.5)) / 2
  value, _ = losses.dice({'seg_logits': jnp.asarray(logits)}, {'segmentation': labels})
  np.testing.assert_allclose(value, expected, rtol=1e-4)
  no_bg, _ = losses.dice({'seg_logits': jnp.asarray(logits)}, {'segmentation': labels},
                         exclude_background=True)
  np.testing.assert_allclose(no_bg, 1 - 2 / 2.5, rtol=1e-4)
  # An ignored pixel is removed from prediction and target alike.
  ignored = labels.copy()
  ignored[0, 1, 0] = 255  # The pixel where class 1 is predicted but class 0 is true.
  value, _ = losses.dice({'seg_logits': jnp.asarray(logits)}, {'segmentation': ignored})
  # That was the only wrong pixel: class 0 P=T=I=2, class 1 P=T=I=1, a perfect prediction.
  np.testing.assert_allclose(value, 0.0, atol=1e-6)


def test_balanced_ce_weighs_each_class_alike_by_hand():
  """1 x 4 pixels, 2 classes: three background pixels and one object pixel. Plain cross-entropy
  is the pixel mean; the balanced term the mean of each class's mean. With a pixel weight (the
  confident pseudo-labels) the class means run over the weighted pixels; under pmap the classes'
  sums are pooled over the devices before the ratio."""
  logits = np.array([[[[3.0, 0.0], [1.0, 0.0], [0.0, 2.0], [2.0, 1.0]]]], np.float32)
  labels = np.array([[[0, 0, 0, 1]]])
  ce = -_log_softmax(logits.astype(np.float64))[0, 0][np.arange(4), labels[0, 0]]
  outputs = {'seg_logits': jnp.asarray(logits)}
  value, metrics = losses.balanced_ce(outputs, {'segmentation': labels})
  np.testing.assert_allclose(value, (ce[:3].mean() + ce[3]) / 2, rtol=1e-6)
  plain, _ = losses.seg_ce(outputs, {'segmentation': labels})
  assert abs(float(plain) - float(value)) > 0.1 and 'balanced_ce' in metrics
  weight = np.array([[1.0, 0.0, 1.0, 1.0]], np.float32)  # Pixel 1 not confident.
  value, _ = losses.balanced_ce(outputs, {'segmentation': labels, 'pixel_weight': weight})
  np.testing.assert_allclose(value, ((ce[0] + ce[2]) / 2 + ce[3]) / 2, rtol=1e-6)
  # A class with no counted pixel does not count: only class 0 left.
  value, _ = losses.balanced_ce(outputs, {'segmentation': np.array([[[0, 0, 0, 255]]])})
  np.testing.assert_allclose(value, ce[:3].mean(), rtol=1e-6)
  # Two devices, the object on one: the pmean of their values is the one-device value.
  import jax  # pylint: disable=import-outside-toplevel
  halves = jax.pmap(lambda o, b: losses.balanced_ce(o, b, axis_name='d')[0], axis_name='d',
                    devices=jax.devices()[:2])
  if jax.device_count() >= 2:
    shares = halves({'seg_logits': jnp.asarray(logits.reshape(2, 1, 1, 2, 2))},
                    {'segmentation': labels.reshape(2, 1, 1, 2)})
    np.testing.assert_allclose(np.mean(shares), (ce[:3].mean() + ce[3]) / 2, rtol=1e-6)


def test_per_pixel_terms():
  image = jnp.full((2, 2, 2, 1), 0.25)
  out = {'rec_logits': jnp.zeros((2, 2, 2, 1)), 'mean': jnp.ones((2, 1, 1, 2)),
         'logvar': jnp.zeros((2, 1, 1, 2))}
  np.testing.assert_allclose(losses.rec_mse_per_pixel(out, {'image': image})[0], 0.0625, rtol=1e-6)
  # Spatial latent [2, 1, 1, 2], mean 1, var 1: KL = 1 nat per image, over 4 pixels.
  np.testing.assert_allclose(losses.kl(out, {'image': image})[0], 1.0, rtol=1e-6)
  np.testing.assert_allclose(losses.kl_per_pixel(out, {'image': image})[0], 0.25, rtol=1e-6)


def test_confusion_matrix_and_scores_by_hand():
  labels = jnp.array([[0, 0, 1, 1], [2, 255, 1, 0]])
  preds = jnp.array([[0, 1, 1, 1], [0, 2, 1, 2]])
  c = np.asarray(metrics.confusion_matrix(labels, preds, 3))
  expected = np.array([[1, 1, 1],   # true 0 -> predicted 0, 1, 2
                       [0, 3, 0],   # true 1
                       [1, 0, 0]])  # true 2; the 255 pixel is not counted
  np.testing.assert_array_equal(c, expected)
  weighted = np.asarray(metrics.confusion_matrix(labels, preds, 3,
                                                 jnp.array([[1, 1, 1, 1], [0, 0, 0, 0]])))
  np.testing.assert_array_equal(weighted, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
  s = scoring.segmentation_scores(expected, ['bg', 'a', 'b'])
  iou = [1 / (1 + 1 + 2), 3 / (3 + 1 + 0), 0.0]  # TP / (TP + FP + FN)
  np.testing.assert_allclose([s['per_class'][n]['iou'] for n in ('bg', 'a', 'b')], iou)
  np.testing.assert_allclose(s['miou'], np.mean(iou))
  np.testing.assert_allclose(s['per_class']['a']['dice'], 6 / 7)
  np.testing.assert_allclose(s['pixel_accuracy'], 4 / 7)
  # A class absent from truth and prediction does not drag mIoU down.
  s2 = scoring.segmentation_scores(np.array([[2, 0, 0], [0, 2, 0], [0, 0, 0]]))
  assert s2['miou'] == 1.0 and s2['per_class']['2']['pixels'] == 0


@pytest.mark.parametrize('name', ['seg_ce', 'dice', 'focal', 'balanced_ce'])
def test_segmentation_terms_run_under_jit_and_match_eager(name):
  import jax
  rng = np.random.default_rng(0)
  outputs = {'seg_logits': jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)}
  labels = rng.integers(0, 3, (2, 4, 4))
  labels[0, 0, 0] = 255
  batch = {'segmentation': jnp.asarray(labels), 'labeled': jnp.array([1.0, 0.0])}
  eager, _ = losses.LOSSES.get(name)(outputs, batch)
  jitted, _ = jax.jit(losses.LOSSES.get(name))(outputs, batch)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5)
  assert np.isfinite(float(jitted)) and float(jitted) > 0


def test_summary_text_names_loss_terms_apart_from_metrics():
  """The progress line once printed the soft Dice loss term as dice=0.38 beside the metric
  mean_dice=0.96; terms now carry _loss."""
  from segae_jax.training.metrics import summary_text
  text = summary_text({'loss': 0.5, 'dice': 0.375, 'seg_ce': 0.125, 'mean_dice': 0.96,
                       'miou': 0.9, 'per_class': {'a': {'iou': 1.0}}}, ['seg_ce', 'dice'])
  assert text == ('dice_loss=0.375 loss=0.5 mean_dice=0.96 miou=0.9 seg_ce_loss=0.125')
