"""The benchmark's reference models are the networks ../shared/bench/README.md specifies: the
PyTorch reference's parameters counted by hand, batch sizes, losses and optimiser settings."""
import glob
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, run
from segae_jax import models


def _count(config, shape):
  model = models.build(config.model, shape, num_classes=11)
  x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init({'params': jax.random.PRNGKey(0),
                                                   'reparam': jax.random.PRNGKey(1)}, x), x)
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def test_vae_fmnist_is_the_reference_network():
  config = run.reference_config('vae_fmnist')
  conv = lambda cin, cout: 9 * cin * cout + cout
  dense = lambda nin, nout: nin * nout + nout
  expected = (conv(1, 32) + conv(32, 64) + dense(3136, 256) + dense(256, 64)      # encoder
              + dense(32, 256) + dense(256, 3136) + conv(64, 32) + conv(32, 1))  # decoder
  assert expected == 1_671_489
  assert _count(config, (28, 28, 1)) == expected
  assert (config.batch_size, config.learning_rate, config.optimizer) == (256, 1e-3, 'adam')
  assert dict(config.loss) == {'rec_bce': 1.0, 'kl': 1.0} and config.model.latent_dim == 32


def test_unet64_is_the_reference_network():
  config = run.reference_config('unet64')
  assert _count(config, (64, 64, 1)) == 1_926_763  # Hand count in test_seg_models.
  assert (config.batch_size, config.learning_rate, config.model.norm) == (32, 1e-3, 'batch')
  assert tuple(config.model.features) == (32, 64, 128, 256) and dict(config.loss) == {'seg_ce': 1.0}


def test_profile_categories_name_the_convolutions_of_a_step():
  # The step profile assigns XLA ops to categories from the optimized HLO: a convolution's
  # forward and input gradient, and the matmul kernel gradient as dots.
  from benchmarks import profile_convs
  from segae_jax.models import conv_ops
  x = jnp.ones((2, 8, 8, 16))
  w = jnp.ones((3, 3, 16, 16))
  loss = lambda x, w: jnp.sum(conv_ops.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  found = {category for category, _ in profile_convs.op_categories(hlo).values()}
  assert {'convolution forward', 'convolution input gradient',
          'dot (dense layers, matmul kernel gradients)'} <= found, found


def test_small_foreground_summary_pairs_arms_with_ce_by_hand():
  from benchmarks import paired, small_foreground as sf
  rows = [{'arm': arm, 'seed': s, 'foreground_iou': iou, 'miou': 0.5, 'wall_s': 10.0 + s}
          for arm, s, iou in (('ce', 0, 0.10), ('ce', 1, 0.20), ('ce_dice', 0, 0.30),
                              ('ce_dice', 1, 0.36))]
  summary = {r['figure']: r for r in paired.summary_rows(rows, sf.ARMS, 'ce',
                                                        ('foreground_iou', 'miou'))}
  d = summary['arm/ce_dice']['foreground_iou_difference_to_ce']
  # d = (0.20, 0.16): mean 0.18, sd 0.0282843, half width 12.7062047 * 0.0282843 / sqrt(2).
  np.testing.assert_allclose([d['mean'], d['high']], [0.18, 0.18 + 0.254124], atol=1e-5)
  assert summary['arm/ce_dice']['wall_s_min'] == 10.0
  table = sf.markdown(list(summary.values()), {'train': 0.02, 'test': 0.03})
  assert '| ce_dice | 33.0 ± 4.2 | +18.0 [-7.4, +43.4] | 50.0 ± 0.0 | 2 | 10 |' in table


def test_small_foreground_data_is_a_few_percent_and_weights_balance_it(tmp_path):
  from benchmarks import small_foreground as sf
  fractions = sf.write_folder(str(tmp_path), num_train=3, num_test=1)
  assert 0.005 < fractions['train'] < 0.05 and 0.005 < fractions['test'] < 0.05
  weights = sf.class_weights(str(tmp_path))
  # Median frequency balancing of two classes: w_c f_c = median(f) = 1/2 for both.
  frequency = np.array([1 - fractions['train'], fractions['train']])
  np.testing.assert_allclose(np.array(weights) * frequency, [0.5, 0.5], rtol=1e-6)


def test_nuclei_data_keeps_16_bits_in_tiff_and_maps_the_range_to_8_bits(tmp_path):
  import tifffile
  from PIL import Image
  from benchmarks import nuclei
  np.testing.assert_array_equal(nuclei.to_8_bit(np.array([100, 300, 30100], np.uint16)),
                                [0, 2, 255])  # 200 / 30000 * 255 = 1.7 -> 2.
  nuclei.write_folders(str(tmp_path), num_train=1, num_test=1)
  image = tifffile.imread(tmp_path / 'tiff' / 'images' / 'train' / 'cell00.tif')
  labels = tifffile.imread(tmp_path / 'tiff' / 'masks' / 'train' / 'cell00.tif')
  assert image.dtype == np.uint16 and image.max() > 5000 and labels.max() >= 14
  png = np.asarray(Image.open(tmp_path / 'png8' / 'images' / 'train' / 'cell00.png'))
  np.testing.assert_array_equal(png, nuclei.to_8_bit(image))


def test_side_by_side_reads_finished_rounds_back_and_averages_them(tmp_path):
  """A ledger holding every round is read back, nothing is run (no PyTorch here: running a round
  would fail), and the summary is the mean of the rounds: by hand, ours 6 and 10, eager 4 and 6,
  compiled 6 and 10 -> means 8 / 5 / 8, ratios 1.6, 1.0, best peer 8 -> 1.0."""
  from benchmarks import side_by_side
  ledger = tmp_path / 'ledger.jsonl'
  rows = []
  for model in side_by_side.MODELS:
    for round_, (ours, eager, compiled) in enumerate(((6.0, 4.0, 6.0), (10.0, 6.0, 10.0))):
      rows.append({'figure': f'side_by_side/{model}/float32/{round_}',
                   'segae_jax_images_per_s': ours, 'torch_eager_images_per_s': eager,
                   'torch_compile_images_per_s': compiled})
  ledger.write_text(''.join(json.dumps(row) + '\n' for row in rows))

  def never(*args):
    raise AssertionError(f'a finished round was run again: {args}')

  out = side_by_side.figures('/nonexistent/python', never, rounds=2, ledger=str(ledger))
  summaries = {row['figure']: row for row in out if row['figure'].count('/') == 2}
  assert set(summaries) == {'side_by_side/vae_fmnist/float32', 'side_by_side/unet64/float32'}
  for row in summaries.values():
    assert row['rounds'] == 2 and row['segae_jax_images_per_s'] == 8.0
    assert row['ratio_to_torch_eager'] == 1.6 and row['ratio_to_torch_compile'] == 1.0
    assert row['ratio_to_best_peer'] == 1.0
  with pytest.raises(AssertionError, match='run again'):  # a third round is not in the ledger
    side_by_side.figures('/nonexistent/python', never, rounds=3, ledger=str(ledger))
  # A run stopped while writing round 1 of unet64 left half a line: that round runs again.
  finished = ''.join(json.dumps(row) + '\n' for row in rows[:-1])
  ledger.write_text(finished + json.dumps(rows[-1])[:30])
  with pytest.raises(AssertionError, match="'unet64', 'float32'"):
    side_by_side.figures('/nonexistent/python', never, rounds=2, ledger=str(ledger))


def test_step_cost_ratios_pair_the_rounds_by_hand():
  from benchmarks import step_cost  # pylint: disable=import-outside-toplevel
  times = {'supervised_32': [1.0, 2.0, 4.0], 'unimatch': [2.0, 3.0, 9.0]}
  # Medians 3 / 2 = 1.5; round ratios 2, 1.5, 2.25: their median 2 (the drift cancels).
  assert step_cost.ratios(times, 'unimatch') == {'ratio_to_supervised_32': 1.5,
                                                 'paired_ratio_to_supervised_32': 2.0}
  assert step_cost.ratios(times, 'supervised_32')['paired_ratio_to_supervised_32'] == 1.0


def test_step_bound_pool_keeps_the_forward_and_broadcasts_the_gradient():
  """The pool_free bound times the same forward; its backward writes each window's gradient to
  all four inputs (by hand: g = [[1, 2]] -> rows [1, 1, 2, 2] twice)."""
  from benchmarks import step_bounds
  from segae_jax.models import unet
  pool = step_bounds.broadcast_pool_gradient()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 3))
  np.testing.assert_array_equal(pool(x), unet.max_pool_2x2(x))
  x = jnp.arange(8.0).reshape(1, 2, 4, 1)
  g = jax.grad(lambda x: jnp.sum(pool(x) * jnp.array([1.0, 2.0]).reshape(1, 1, 2, 1)))(x)
  np.testing.assert_array_equal(g[0, ..., 0], [[1, 1, 2, 2], [1, 1, 2, 2]])


def test_a_stopped_bench_resumes_from_the_results_folder(monkeypatch, tmp_path):
  """`make bench` keeps its side-by-side rounds in benchmarks/results/side_by_side_<date>.jsonl
  (and reads them back from there), beside the ledgers the docs cite, not among the modules."""
  from benchmarks import side_by_side
  ledgers = []
  monkeypatch.setattr(run, 'matmul_peak', lambda: {'figure': 'matmul_peak', 'gflop_per_s': 1.0})
  monkeypatch.setattr(side_by_side, 'figures', lambda *args: ledgers.append(args[-1]) or [])
  run.run(['side_by_side'], str(tmp_path / 'results.json'), torch_python='python')
  today = time.strftime('%Y-%m-%d')
  assert ledgers == [os.path.join(common.RESULTS, f'side_by_side_{today}.jsonl')]
  assert not glob.glob(os.path.join(common.ROOT, 'benchmarks', '*.jsonl'))


def test_every_ledger_the_docs_cite_is_there():
  """Each benchmarks/...jsonl or .md path in README.md and docs/*.md names a file (or, with a *,
  some files) of the checkout; <date> stands for any day's ledger."""
  docs = glob.glob(os.path.join(common.ROOT, 'docs', '*.md'))
  docs.append(os.path.join(common.ROOT, 'README.md'))
  cited = {path for doc in docs
           for path in re.findall(r'benchmarks/[\w/*<>-]+\.(?:jsonl|md)', open(doc).read())}
  assert cited
  missing = [path for path in sorted(cited)
             if not glob.glob(os.path.join(common.ROOT, path.replace('<date>', '*')))]
  assert not missing, missing


def test_a_benchmark_output_is_written_whole_or_is_one_line_and_exit_2(tmp_path, monkeypatch,
                                                                       capsys):
  from test_write_faults import Faults, leftovers  # pylint: disable=import-outside-toplevel
  ledger = tmp_path / 'bench.json'
  common.write_output(str(ledger), '[{"old": 1}]')
  Faults('bench.json', 'write', code='ENOSPC').install(monkeypatch.setattr)
  with pytest.raises(SystemExit) as exit_:
    common.write_output(str(ledger), '[{"new": 2}]' * 1000)
  monkeypatch.undo()
  assert exit_.value.code == 2
  assert capsys.readouterr().err == (f'error: cannot write {ledger}: No space left on device '
                                     '(ENOSPC)\n')
  assert json.loads(ledger.read_text()) == [{'old': 1}] and leftovers(tmp_path) == []
