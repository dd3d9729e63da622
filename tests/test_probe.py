"""segae_jax.tools.probe: the labeled subsets, class weights, focal loss and early stopping by hand,
the fine-tuned encoder starting from the autoencoder's, and the command end to end on a VAE
trained for a few steps on the real Fashion-MNIST."""
import json
import os
import re

import jax
import numpy as np
import optax
import pytest

from configs import probe_fashion_mnist
from segae_jax import losses
from segae_jax.models import heads
from segae_jax.tools import probe
from segae_jax.errors import UserInputError
from conftest import untrained_run
from test_generate import run_module

# ----------------------------------------------------------------------------- labeled subsets


def _labels(per_class=100, num_classes=10):
  return np.arange(per_class * num_classes) % num_classes  # Class c = index mod 10.


def test_validation_split_disjoint_and_seeded():
  val, pool = probe.split_validation(1000, 100, seed=3)
  assert len(val) == 100 and len(pool) == 900
  assert not set(val) & set(pool) and sorted(set(val) | set(pool)) == list(range(1000))
  again, _ = probe.split_validation(1000, 100, seed=3)
  other, _ = probe.split_validation(1000, 100, seed=4)
  assert np.array_equal(val, again) and not np.array_equal(val, other)
  for bad in (0, 1000):
    with pytest.raises(UserInputError, match=f'config.validation_size must be in .*got {bad}'):
      probe.split_validation(1000, bad, seed=0)


def test_labeled_subset_stratified_deterministic_nested():
  labels = _labels()
  pool = np.arange(1000)
  small = probe.labeled_subset(labels, pool, 0.1, seed=0)
  assert np.bincount(labels[small]).tolist() == [10] * 10  # round(0.1 * 100) per class.
  assert np.array_equal(small, probe.labeled_subset(labels, pool, 0.1, seed=0))
  assert not np.array_equal(small, probe.labeled_subset(labels, pool, 0.1, seed=1))
  large = probe.labeled_subset(labels, pool, 0.5, seed=0)
  assert np.bincount(labels[large]).tolist() == [50] * 10 and set(small) <= set(large)
  assert np.array_equal(probe.labeled_subset(labels, pool, 1.0, seed=0), pool)
  # At least one image per class even when the fraction rounds to 0; only pool images are drawn.
  tiny = probe.labeled_subset(labels, np.arange(500, 1000), 0.001, seed=0)
  assert np.bincount(labels[tiny]).tolist() == [1] * 10 and tiny.min() >= 500


def test_labeled_subset_imbalance_ratio():
  labels = _labels()
  pool = np.arange(1000)
  subset = probe.labeled_subset(labels, pool, 0.5, seed=0, minority_classes=(0, 6), ratio=0.2)
  counts = np.bincount(labels[subset]).tolist()
  assert counts == [10, 50, 50, 50, 50, 50, 10, 50, 50, 50]  # 0.2 * 50 for classes 0 and 6.
  balanced = probe.labeled_subset(labels, pool, 0.5, seed=0)
  assert set(subset) <= set(balanced)  # The minority images kept are a prefix of the same draw.
  full = probe.labeled_subset(labels, pool, 1.0, seed=0, minority_classes=(6,), ratio=0.01)
  assert np.bincount(labels[full])[6] == 1 and len(full) == 901  # max(1, round(0.01 * 100)).
  off = probe.labeled_subset(labels, pool, 0.5, seed=0, minority_classes=(0, 6), ratio=1.0)
  assert np.array_equal(off, balanced)


def test_class_weights_hand_computed():
  # Counts 3, 1, 2, 0: 1/n = 1/3, 1, 1/2 with mean 11/18 -> 6/11, 18/11, 9/11; absent class 0.
  w = probe.class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
  assert w.dtype == np.float32
  np.testing.assert_allclose(w, [6 / 11, 18 / 11, 9 / 11, 0.0], rtol=1e-6)
  assert w[:3].mean() == pytest.approx(1.0)
  np.testing.assert_allclose(probe.class_weights(_labels(), 10), np.ones(10))


# ----------------------------------------------------------------------------- losses


def test_focal_loss_gamma_zero_is_cross_entropy_and_hand_value():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 16)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(losses.softmax_focal(logits, labels, 0.0), ce, rtol=1e-6)
  assert float(probe.classification_loss(logits, labels, 'focal', gamma=0.0)) == \
      pytest.approx(float(np.mean(ce)), rel=1e-6)
  # Logits (0, ln 3): p_0 = 1/4. FL(gamma 2) = -(3/4)^2 * ln(1/4) = 0.5625 * ln 4.
  one = np.array([[0.0, np.log(3.0)]], np.float32)
  value = losses.softmax_focal(one, np.array([0]), 2.0)
  assert float(value[0]) == pytest.approx(0.5625 * np.log(4.0), rel=1e-5)
  assert float(probe.classification_loss(one, np.array([0]), 'ce')) == \
      pytest.approx(np.log(4.0), rel=1e-5)


def test_weighted_ce_hand_computed():
  logits = np.array([[0.0, np.log(3.0)], [0.0, 0.0]], np.float32)
  labels = np.array([0, 1])
  weights = np.array([0.5, 1.5], np.float32)
  expected = (0.5 * np.log(4.0) + 1.5 * np.log(2.0)) / 2
  value = probe.classification_loss(logits, labels, 'weighted_ce', weights)
  assert float(value) == pytest.approx(expected, rel=1e-5)
  with pytest.raises(UserInputError, match="config.loss: unknown 'hinge'"):
    probe.classification_loss(logits, labels, 'hinge')


# ----------------------------------------------------------------------------- early stopping


def _run_curve(curve, patience, eval_every=100):
  """Feeds the curve to early_stopping one evaluation at a time, as train_classifier does:
  returns (best step, stopping step)."""
  for k in range(len(curve)):
    best, stop = probe.early_stopping(curve[:k + 1], patience)
    if stop:
      break
  return (best + 1) * eval_every, (k + 1) * eval_every


def test_early_stopping_hand_made_curve():
  curve = [0.50, 0.60, 0.70, 0.65, 0.70, 0.68, 0.69, 0.90]
  # Best 0.70 at the 3rd evaluation (the later tie is no improvement); 3 worse ones -> stop at 6.
  assert _run_curve(curve, patience=3) == (300, 600)
  assert _run_curve(curve, patience=5) == (800, 800)  # Never 5 in a row: runs to the end.
  assert _run_curve(curve, patience=1) == (300, 400)
  assert probe.early_stopping([0.1], 1) == (0, False)
  assert probe.early_stopping([0.3, 0.2], 1) == (0, True)


def test_train_classifier_keeps_best_parameters_and_stops():
  """A separable problem on 2-d inputs: validation accuracy reaches 1, then cannot improve, so
  training stops `patience` evaluations after the best one, which is the one returned."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 2)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  head = heads.LinearHead(2)
  params = head.init(jax.random.PRNGKey(0), x[:1])['params']
  out = probe.train_classifier(head.apply, params, x[:300], y[:300], x[300:], y[300:],
                               num_steps=1000, batch_size=32, learning_rate=0.1,
                               weight_decay=0.0, eval_every=5, patience=3, loss='ce',
                               weights=np.ones(2, np.float32), gamma=2.0, seed=0)
  steps = [s for s, _ in out['history']]
  accs = [a for _, a in out['history']]
  assert out['early_stopped'] and out['stop_step'] == steps[-1] < 1000
  assert out['best_step'] == steps[int(np.argmax(accs))]
  assert out['stop_step'] == out['best_step'] + 3 * 5
  assert out['val_accuracy'] == max(accs) >= 0.97
  predicted = np.asarray(out['predict'](out['params'], x[300:]))
  assert np.mean(predicted == y[300:]) == out['val_accuracy']


def _trained_head(**kwargs):
  """A few steps of train_classifier on a small 2-d problem; returns its flat final params."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 2)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  head = heads.LinearHead(2)
  params = head.init(jax.random.PRNGKey(0), x[:1])['params']
  settings = dict(num_steps=4, batch_size=16, learning_rate=0.1, weight_decay=0.0,
                  eval_every=100, patience=1, loss='ce', weights=np.ones(2, np.float32),
                  gamma=2.0, seed=0)
  out = probe.train_classifier(head.apply, params, x, y, x, y, **{**settings, **kwargs})
  return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(out['params'])])


def test_train_classifier_optimizer_comes_from_the_registry():
  with pytest.raises(UserInputError, match=r"^unknown optimizer 'lamb'; known: adam, adamw, sgd"):
    _trained_head(optimizer='lamb')
  # The default: the registry's 'adam', or its 'adamw' (decoupled decay) when weight_decay > 0.
  assert np.array_equal(_trained_head(), _trained_head(optimizer='adam'))
  decayed = _trained_head(weight_decay=0.5)
  assert np.array_equal(decayed, _trained_head(weight_decay=0.5, optimizer='adamw'))
  assert not np.array_equal(decayed, _trained_head(weight_decay=0.5, optimizer='adam'))
  assert not np.array_equal(_trained_head(), _trained_head(optimizer='sgd'))


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize('field,value,message', [
    ('label_fractions', (0.0, 1.0), 'config.label_fractions must each be in (0, 1], got 0.0'),
    ('label_fractions', (1.5,), 'config.label_fractions must each be in (0, 1], got 1.5'),
    ('methods', ('linear', 'knn'), 'config.methods: unknown knn; known: linear'),
    ('loss', 'hinge', "config.loss: unknown 'hinge'"),
    ('dropout', 1.0, 'config.dropout must be in [0, 1), got 1.0'),
    ('patience', 0, 'config.patience must be >= 1, got 0'),
    ('imbalance.ratio', 0.0, 'config.imbalance.ratio must be in (0, 1] (1 = off), got 0.0'),
    ('imbalance.minority_classes', (3, 10), 'minority_classes: 10 is not a class id'),
])
def test_validate_names_the_field(field, value, message):
  config = probe_fashion_mnist.get_config()
  probe.validate(config)  # The default is valid.
  target = config
  *parents, leaf = field.split('.')
  for p in parents:
    target = target[p]
  target[leaf] = value
  with pytest.raises(UserInputError, match=re.escape(message)):
    probe.validate(config)


# ----------------------------------------------------------------------------- with a trained VAE


def _codes_match(run):
  from segae_jax.tools import latents
  lm = latents.LatentModel(run)
  x = np.random.default_rng(0).random((32, 28, 28, 1)).astype(np.float32)
  classifier = probe.encoder_classifier_for(run, 10, dropout=0.5)
  finetune = probe.init_params(classifier, run.image_shape, 0, run.variables['params']['encoder'])
  scratch = probe.init_params(classifier, run.image_shape, 0)
  code = lambda p: np.asarray(classifier.apply({'params': p}, x, method='code'))
  expected = lm.encode(x)[0]
  np.testing.assert_allclose(code(finetune), expected, atol=1e-5)
  assert np.abs(code(scratch) - expected).max() > 1e-2  # The baseline does start elsewhere.
  # Same head initialisation for both, so only the encoder's start differs.
  assert np.array_equal(finetune['classifier']['head']['kernel'],
                        scratch['classifier']['head']['kernel'])


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_finetune_encoder_starts_at_the_vae_encoder(tiny_vae_workdir):
  from segae_jax.tools import common
  run = common.load_run(tiny_vae_workdir, 'latest')
  _codes_match(run)  # The VAE's posterior mean.


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_finetune_encoder_starts_at_a_sparse_ae_encoder():
  run = untrained_run('sparse_ae', code_activation='sigmoid')
  _codes_match(run)  # sigmoid(encoder output) of a sparse AE.
  with pytest.raises(ValueError, match='do not fit'):
    classifier = probe.encoder_classifier_for(untrained_run('vae'), 10, 0.0)
    probe.init_params(classifier, (28, 28, 1), 0, run.variables['params']['encoder'])


# About 10 s: with the long checks of `make test-faults` (CI runs it), which keeps the default suite
# within its 4 minutes; the probe's parts are tested by hand above.
@pytest.mark.faults
def test_probe_end_to_end(tiny_vae_workdir, fashion_mnist, tmp_path):
  out = str(tmp_path / 'probe')
  proc = run_module('probe', f'--workdir={tiny_vae_workdir}', '--config=configs/probe_fashion_mnist.py',
                    f'--output={out}', '--config.label_fractions=(0.01,0.1)',
                    '--config.num_steps=20', '--config.eval_every=10', '--config.patience=2',
                    '--config.validation_size=1000', '--config.batch_size=64',
                    '--config.loss=focal', '--config.imbalance.ratio=0.2',
                    '--config.generated.per_image=1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.load(open(os.path.join(out, 'probe.json')))
  assert (r['model'], r['step'], r['num_test'], r['num_validation']) == ('vae', 6, 10000, 1000)
  assert r['config']['loss'] == 'focal' and r['config']['label_fractions'] == [0.01, 0.1]
  rows = {(x['method'], x['label_fraction']): x for x in r['results']}
  assert sorted(rows) == sorted((m, f) for m in probe.METHODS for f in (0.01, 0.1))
  # The labeled images per class, recomputed from the real labels: minority classes 0 and 6
  # subsampled to 20%, the same subset for the three methods.
  labels = fashion_mnist.train.arrays['label']
  _, pool = probe.split_validation(len(labels), 1000, 0)
  for fraction in (0.01, 0.1):
    pool_counts = np.bincount(labels[pool], minlength=10)
    expected = [max(1, round(fraction * n)) for n in pool_counts]
    expected = [max(1, round(0.2 * n)) if c in (0, 6) else n for c, n in enumerate(expected)]
    for method in probe.METHODS:
      row = rows[(method, fraction)]
      assert row['labeled_per_class'] == expected and row['num_labeled'] == sum(expected)
      assert row['num_generated'] == row['num_labeled']  # One generated image per real one.
  for row in r['results']:
    assert 0.0 <= row['test_accuracy'] <= 1.0 and len(row['per_class_recall']) == 10
    assert all(0.0 <= v <= 1.0 for v in row['per_class_recall'])
    # Test accuracy is the recall averaged with the test class sizes (1,000 each).
    assert np.mean(row['per_class_recall']) == pytest.approx(row['test_accuracy'], abs=1e-9)
    steps = [s for s, _ in row['val_history']]
    assert row['best_step'] in steps and row['stop_step'] == steps[-1] <= 20
    assert steps == [10, 20][:len(steps)]
    assert row['val_accuracy'] == max(a for _, a in row['val_history'])
    assert row['train_time_s'] > 0
  # A 6-step VAE's standardised code, 20 Adam steps: 37% when written (chance: 10%).
  assert rows[('linear', 0.1)]['test_accuracy'] > 0.2
  assert '| linear | 10% | ' in proc.stdout and ' generated |' in proc.stdout
  assert '| linear | 1% | ' in proc.stdout and 't-shirt* |' in proc.stdout


@pytest.mark.parametrize('override,message', [
    ('--config.label_fractions=(0.0,1.0)', 'config.label_fractions must each be in (0, 1], got 0.0'),
    ('--config.label_fractions=(1.5,)', 'config.label_fractions must each be in (0, 1], got 1.5'),
])
@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_bad_fraction_one_line_exit_2(tmp_path, override, message):
  proc = run_module('probe', f'--workdir={tmp_path}', '--config=configs/probe_fashion_mnist.py',
                    override)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith('error: ') and proc.stderr.count('\n') == 1, proc.stderr
  assert message in proc.stderr
  assert os.listdir(tmp_path) == []  # Refused before writing anything.


# ----------------------------------------------------------------------------- generated data


def test_code_spread_vae_posterior_sd_and_ae_class_sd():
  mean = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 7.0], [5.0, 5.0]])
  logvar = np.log(np.array([[4.0, 1.0], [0.25, 9.0], [1.0, 1.0], [16.0, 0.01]]))
  np.testing.assert_allclose(probe.code_spread(mean, logvar, [0, 0, 1, 2]),
                             [[2.0, 1.0], [0.5, 3.0], [1.0, 1.0], [4.0, 0.1]])
  # AE: class 0 = rows 0, 1, 3 share their class's sd per dimension; class 1 has one image: 0.
  np.testing.assert_allclose(probe.code_spread(mean, None, [0, 0, 1, 0]),
                             [[np.std([0, 2, 5]), np.std([1, 1, 5])]] * 2 + [[0.0, 0.0]] +
                             [[np.std([0, 2, 5]), np.std([1, 1, 5])]])


def test_codes_near_repeats_each_row_and_draws_at_the_given_spread():
  mean = np.array([[1.0, -3.0], [10.0, 0.0]])
  spread = np.array([[0.5, 2.0], [0.0, 1.0]])
  z = probe.codes_near(mean, spread, 20000, 1.0, np.random.default_rng(0))
  assert z.shape == (40000, 2) and z.dtype == np.float32
  first, second = z[:20000], z[20000:]
  np.testing.assert_allclose(first.mean(0), [1.0, -3.0], atol=0.05)
  np.testing.assert_allclose(first.std(0), [0.5, 2.0], rtol=0.03)
  assert np.all(second[:, 0] == 10.0)  # Zero spread: no noise in that dimension.
  np.testing.assert_allclose(second[:, 1].std(), 1.0, rtol=0.03)
  half = probe.codes_near(mean, spread, 20000, 0.5, np.random.default_rng(0))
  np.testing.assert_allclose(half - mean.repeat(20000, 0), 0.5 * (z - mean.repeat(20000, 0)),
                             atol=1e-5)  # Same eps, half the step.
  assert np.array_equal(probe.codes_near(mean, spread, 3, 0.0, np.random.default_rng(1)),
                        mean.repeat(3, 0).astype(np.float32))


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_generated_images_are_reconstructions_at_zero_noise_and_seeded(tiny_vae_workdir):
  from segae_jax import data
  from segae_jax.tools import common, latents
  run = common.load_run(tiny_vae_workdir, 'latest')
  lm = latents.LatentModel(run)
  dataset = data.build(run.config.data)
  x, _ = lm.read_examples(dataset.train, dataset.preprocess, range(6), seed=0)
  y = np.array([3, 3, 1, 1, 1, 0])
  images, labels = probe.generate_near_codes(lm, x, y, 4, 0.0, seed=0, binarize=False,
                                             batch_size=4)
  assert images.shape == (24, 28, 28, 1) and labels.tolist() == np.repeat(y, 4).tolist()
  reconstruction = lm.decode(lm.encode(x)[0])
  np.testing.assert_allclose(images, reconstruction.repeat(4, 0), atol=1e-6)
  noisy, _ = probe.generate_near_codes(lm, x, y, 4, 1.0, seed=0, binarize=True)
  again, _ = probe.generate_near_codes(lm, x, y, 4, 1.0, seed=0, binarize=True)
  other, _ = probe.generate_near_codes(lm, x, y, 4, 1.0, seed=1, binarize=True)
  assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)
  assert set(np.unique(noisy)) <= {0.0, 1.0}


def test_bad_generated_config_names_the_field():
  config = probe_fashion_mnist.get_config()
  config.generated.per_image = -1
  with pytest.raises(UserInputError, match=r'config.generated.per_image must be >= 0 \(0 = off\), got -1'):
    probe.validate(config)
