"""benchmarks/label_efficiency.py: its statistics by hand, and the harness on a tiny grid of real
runs (paired subsets, finished runs read back, an interrupted run resumed)."""
import argparse
import ast
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import label_efficiency as le
from segae_jax.tools import sweep
from segae_jax.training import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_interval_by_hand():
  # d = (0.05, 0.08, 0.08): mean 0.07, sd sqrt(0.0006 / 2) = 0.0173205, t(0.975, 2) = 4.3026527
  # (scipy-free value from tables), half width 4.3026527 * 0.0173205 / sqrt(3) = 0.0430265.
  d = le.paired_interval([0.50, 0.55, 0.60], [0.45, 0.47, 0.52])
  assert d['pairs'] == 3
  np.testing.assert_allclose([d['mean'], d['low'], d['high']],
                             [0.07, 0.07 - 0.0430265, 0.07 + 0.0430265], atol=1e-6)
  one = le.paired_interval([0.5], [0.4])
  assert one['pairs'] == 1 and np.isclose(one['mean'], 0.1) and np.isnan(one['low'])


def _row(fraction, arm, seed, miou):
  return {'figure': f'run/{fraction}/{arm}/seed{seed}', 'miou': miou, 'wall_s': 10.0 * seed,
          'curve': [[1, miou / 2], [2, miou]]}


def test_summary_pairs_only_the_seeds_both_arms_finished():
  rows = [_row('5pct', 'unet', s, m) for s, m in ((0, 0.40), (1, 0.42), (2, 0.44))]
  rows += [_row('5pct', 'fixmatch', s, m) for s, m in ((0, 0.45), (1, 0.50), (3, 0.9))]
  summary = {r['figure']: r for r in le.summarise(rows)}
  fixmatch = summary['arm/5pct/fixmatch']
  assert fixmatch['seeds'] == [0, 1, 3]
  np.testing.assert_allclose(fixmatch['miou_mean'], (0.45 + 0.50 + 0.9) / 3)
  # Paired over seeds 0 and 1 only: d = (0.05, 0.08), mean 0.065, sd 0.0212132, t(0.975, 1)
  # = 12.7062047, half width 12.7062047 * 0.0212132 / sqrt(2) = 0.190593.
  d = fixmatch['difference_to_unet']
  assert d['pairs'] == 2
  np.testing.assert_allclose([d['mean'], d['low'], d['high']],
                             [0.065, 0.065 - 0.190593, 0.065 + 0.190593], atol=1e-5)
  table = le.markdown_table(le.summarise(rows), [], {})
  assert '| 5% | fixmatch | 61.7 ± 24.7 | 3 | +6.5 [-12.6, +25.6] | – | 0 |' in table
  # The all-masks ceiling of seeds 0 and 1 (0.60, 0.64): the reference's gap is 0.21 on
  # average, of which fixmatch closes 0.065 / 0.21 = 31%.
  rows += [_row('5pct', 'full', s, m) for s, m in ((0, 0.60), (1, 0.64))]
  summary = {r['figure']: r for r in le.summarise(rows)}
  np.testing.assert_allclose(summary['arm/5pct/fixmatch']['gap_closed'], 0.065 / 0.21)
  assert '| 5% | fixmatch | 61.7 ± 24.7 | 3 | +6.5 [-12.6, +25.6] | 31% | 0 |' in (
      le.markdown_table(le.summarise(rows), [], {}))


def test_pseudo_label_figures_come_from_the_last_log_line_that_has_them(tmp_path):
  """A run's metrics.jsonl (two classes): the last training line with the per-class figures
  gives the run's; the table averages the seeds and splits background from objects."""
  lines = [{'step': 100, 'train/pseudo_accuracy': 0.1, 'train/confident_fraction/0': 0.0,
            'train/confident_fraction/1': 0.0, 'train/pseudo_accuracy/0': 0.0,
            'train/pseudo_accuracy/1': 0.0, 'train/pseudo_coverage/0': 0.0,
            'train/pseudo_coverage/1': 0.0},
           {'step': 200, 'train/pseudo_accuracy': 0.9, 'train/confident_fraction/0': 0.8,
            'train/confident_fraction/1': 0.2, 'train/pseudo_accuracy/0': 0.95,
            'train/pseudo_accuracy/1': 0.5, 'train/pseudo_coverage/0': 0.7,
            'train/pseudo_coverage/1': 0.1},
           {'step': 200, 'test/miou': 0.4}]
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in lines))
  got = le.pseudo_labels(str(tmp_path))
  assert got == {'step': 200, 'pseudo_accuracy_all': 0.9, 'confident_fraction': [0.8, 0.2],
                 'pseudo_accuracy': [0.95, 0.5], 'pseudo_coverage': [0.7, 0.1]}
  rows = [dict(_row('5pct', 'unimatch', s, 0.5), pseudo_labels=dict(
      got, pseudo_coverage=[0.7, 0.1 + 0.2 * s])) for s in (0, 1)]
  rows.append(dict(_row('5pct', 'unet', 0, 0.4), pseudo_labels=None))
  summary = le.pseudo_label_summary(rows)
  assert list(summary) == [('5pct', 'unimatch')]
  np.testing.assert_allclose(summary[('5pct', 'unimatch')]['object_coverage'], 0.2)
  assert '| 5% | unimatch | 2 | 90.0 | 70.0 | 20.0 | 50.0 |' in le.pseudo_label_table(rows)
  (tmp_path / 'no_pool').mkdir()
  (tmp_path / 'no_pool' / 'metrics.jsonl').write_text(json.dumps(lines[-1]))
  assert le.pseudo_labels(str(tmp_path / 'no_pool')) is None


def test_longer_runs_are_paired_apart_from_the_grid():
  grid = [_row('5pct', 'unet', s, 0.40) for s in (0, 1)]
  long = [dict(_row('5pct', arm, s, m), figure=f'long/5pct/{arm}/seed{s}', steps=3000)
          for arm, s, m in (('unet', 0, 0.47), ('unet', 1, 0.45), ('fixmatch', 0, 0.50),
                            ('fixmatch', 1, 0.46))]
  assert [r['figure'] for r in le.summarise(grid + long)] == ['arm/5pct/unet']
  summary = {r['figure']: r for r in le.summarise(grid + long, 'long')}
  d = summary['long_arm/5pct/fixmatch']['difference_to_unet']
  # d = (0.03, 0.01): mean 0.02, sd 0.0141421, half width 12.7062047 * 0.0141421 / sqrt(2).
  np.testing.assert_allclose([d['mean'], d['high']], [0.02, 0.02 + 0.127062], atol=1e-5)
  table = le.markdown_table(le.summarise(grid), [], {}, grid + long)
  assert '| 5% | fixmatch | 48.0 ± 2.8 | 2 | +2.0 [-10.7, +14.7] |' in table


def test_tuning_winners_set_the_arms_of_the_grid():
  tune = [{'figure': f'tune/{name}', 'miou': miou, 'wall_s': 1.0}
          for name, miou in (('rec/masked_rec', 0.40), ('rec/denoising', 0.43),
                             ('fixmatch/default', 0.45), ('fixmatch/threshold0.8', 0.44))]
  best = le.best_candidates(tune)
  assert best == {'rec': 'denoising', 'fixmatch': 'default'}
  settings = le.arm_settings(best)
  assert settings['rec'] == ('denoising_folder', True, ())
  assert settings['fixmatch'] == ('fixmatch_folder', True, ())
  assert settings['unet'] == ('folder', False, ('--config.loss.dice=0.0',))
  assert 'segae_joint' not in settings
  # The arms built on unimatch take its winner's overrides on their own config.
  assert 'unimatch_rec' not in settings
  settings = le.arm_settings({**best, 'unimatch': 'data_views'})
  assert settings['unimatch'] == ('unimatch_folder', True, le.DATA_VIEWS)
  assert settings['unimatch_rec'] == ('unimatch_segae_folder', True, le.DATA_VIEWS)
  assert settings['mae_unimatch'] == ('unimatch_folder', True, le.DATA_VIEWS)
  # The reference's weak-view check is reported, never applied by itself.
  settings = le.arm_settings({**best, 'unet_views': 'flips_scale_crop'})
  assert settings['unet'] == ('folder', False, ('--config.loss.dice=0.0',))
  assert le.TUNING_ARM['unet_views'] == le.REFERENCE
  assert '--config.data.augment.crop_min_scale=0.7' in le.TUNING['unet_views'][
      'flips_scale_crop'][1]


def test_a_grid_continued_elsewhere_takes_its_tuning_from_the_committed_ledger(tmp_path):
  ledger = os.path.join(ROOT, 'benchmarks', 'results', 'label_efficiency_unimatch.jsonl')
  rows = le.read_tuning(ledger)
  assert rows and all(row['figure'].startswith('tune/') for row in rows)
  # Its winner, data_views_adaptive (validation 43.0), sets the arms built on unimatch.
  settings = le.arm_settings(le.best_candidates(rows))
  assert settings['unimatch_rec'] == ('unimatch_segae_folder', True, le.DATA_VIEWS + le.ADAPTIVE)
  base = ['--workdir=/tmp/x', '--arms=unimatch_rec', '--extra_seeds=', '--long_steps=0']
  assert le.parse_args([*base, f'--tuned_from={ledger}']).arms == ['unimatch_rec']
  # Without it the reference stays mandatory; a ledger without tuning rows is refused.
  with pytest.raises(SystemExit):
    le.parse_args(base)
  runs_only = tmp_path / 'runs_only.jsonl'
  runs_only.write_text(json.dumps({'figure': 'run/5pct/unet/seed0', 'miou': 0.4}) + '\n')
  with pytest.raises(SystemExit):
    le.parse_args([*base, f'--tuned_from={runs_only}'])


def test_tuning_seeds_compare_the_candidates_on_the_seeds_all_ran():
  row = lambda name, seed, miou: {'figure': f'tune/unet_views/{name}', 'miou': miou,
                                  'wall_s': 10.0, **({'seed': seed} if seed != 100 else {})}
  # Seed 100 as the ledger wrote it before TUNE_SEEDS (no 'seed'); seed 2 only for flips.
  tune = [row('flips', 100, 0.45), row('crop', 100, 0.47), row('flips', 1, 0.46),
          row('crop', 1, 0.45), row('flips', 2, 0.90)]
  summary = le.tuning_summary(tune)['unet_views']
  assert summary['flips']['seeds'] == summary['crop']['seeds'] == [1, 100]
  np.testing.assert_allclose([summary['flips']['miou'], summary['crop']['miou']],
                             [0.455, 0.46])
  assert summary['flips']['wall_s'] == 30.0
  # Differences crop - flips: +0.02 (seed 100), -0.01 (seed 1); mean 0.005, sd 0.0212132,
  # half width 12.7062047 * 0.0212132 / sqrt(2) = 0.190593.
  d = summary['crop']['difference']
  np.testing.assert_allclose([d['mean'], d['low'], d['high']],
                             [0.005, 0.005 - 0.190593, 0.005 + 0.190593], atol=1e-6)
  assert le.best_candidates(tune) == {'unet_views': 'crop'}   # Not flips' lone seed 2.
  table = '\n'.join(le.tuning_table(tune, {'unet_views': 'crop'}))
  assert '| unet_views | crop | 46.0 | 2 | +0.5 [-18.6, +19.6] | 20 | yes |' in table


def test_every_arm_takes_scale_crop_only_past_the_margin():
  row = lambda name, seed, miou: {'figure': f'tune/unet_views/{name}', 'miou': miou,
                                  'wall_s': 1.0, 'seed': seed}
  flips = [row('flips', s, m) for s, m in ((100, 0.45), (1, 0.43), (2, 0.44))]
  crop = lambda gains: [row('flips_scale_crop', s, m + g)
                        for (s, m), g in zip(((100, 0.45), (1, 0.43), (2, 0.44)), gains)]
  assert le.weak_view(flips + crop((0.009, 0.026, 0.0))) == 'flips_scale_crop'  # +0.0117
  assert le.weak_view(flips + crop((0.009, 0.011, 0.009))) == 'flips'           # +0.0097
  assert le.weak_view(flips + crop((0.009, 0.026, 0.0)), 'flips') == 'flips'   # --weak_view
  assert le.weak_view([]) == 'flips'
  assert le.WEAK_VIEWS['flips_scale_crop'] == ('--config.data.augment.crop_min_scale=0.7',)
  assert (le.runs_dir('flips'), le.runs_dir('flips_scale_crop', 'long')) == (
      'runs', 'long_flips_scale_crop')


def test_weak_views_side_by_side_by_hand(tmp_path):
  from benchmarks import weak_views  # pylint: disable=import-outside-toplevel
  runs = {('runs', 'unet'): (0.40, 0.42), ('runs', 'full'): (0.60, 0.62),
          ('runs', 'unimatch'): (0.45, 0.47), ('runs_flips_scale_crop', 'unet'): (0.44,),
          ('runs_flips_scale_crop', 'full'): (0.54,),
          ('runs_flips_scale_crop', 'unimatch'): (0.49,)}
  for (folder, arm), mious in runs.items():
    for seed, miou in enumerate(mious):
      run = tmp_path / folder / '5pct' / arm / f'seed{seed}'
      run.mkdir(parents=True)
      (run / 'results.json').write_text(json.dumps({'test': {'miou': miou}}))
  table = weak_views.markdown(weak_views.compare(str(tmp_path)))
  # Flips: +0.05 on both seeds of a 0.20 gap (25%); against the scale-crop ceiling (seed 0
  # only: 0.54 - 0.40) 0.05 / 0.14 = 36%.
  assert ('| 5% | flips | unimatch | 0, 1 | 45.0 / 47.0 | +5.0 [+5.0, +5.0] | 25% | 36% |  |'
          in table)
  # Scale-crop, seed 0: 0.05 of 0.60 - 0.44 = 0.16 (31%), of 0.54 - 0.44 = 0.10 (50%).
  assert ('| 5% | flips_scale_crop | unimatch | 0 | 49.0 | +5.0 (1 seed) | 31% | 50% |  |'
          in table)
  assert '| 1% |' not in table   # Nothing ran at 1%; the ceiling is shown once.


def test_weak_views_reads_recorded_figures_and_pairs_an_arm_with_its_base(tmp_path):
  from benchmarks import weak_views  # pylint: disable=import-outside-toplevel
  view, folder = 'flips_scale_crop', 'runs_flips_scale_crop'
  # The reference and unimatch ran on another machine: only their recorded figures are left.
  ledger = tmp_path / 'earlier.jsonl'
  ledger.write_text('\n'.join(json.dumps(
      {'fraction': '5pct', 'view': view, 'arm': arm, 'miou': {str(s): m for s, m in mious}})
      for arm, mious in [('unet', [(0, 0.40), (1, 0.42), (2, 0.44)]),
                         ('unimatch', [(0, 0.45), (1, 0.46), (2, 0.50)]),
                         ('unimatch_rec', [(0, 0.99)])]) + '\n')
  # unimatch_rec seed 0 recorded as 0.99, but its folder finished here: the folder wins.
  for seed, miou in enumerate((0.46, 0.47, 0.53)):
    run = tmp_path / 'grid' / folder / '5pct' / 'unimatch_rec' / f'seed{seed}'
    run.mkdir(parents=True)
    (run / 'results.json').write_text(json.dumps({'test': {'miou': miou}}))
  rows = weak_views.compare(str(tmp_path / 'grid'),
                            recorded=weak_views.read_recorded([str(ledger)]))
  by_arm = {row['arm']: row for row in rows}
  assert by_arm['unimatch']['miou'] == {0: 0.45, 1: 0.46, 2: 0.50}
  assert 'difference_to_base' not in by_arm['unimatch']
  rec = by_arm['unimatch_rec']
  assert rec['miou'] == {0: 0.46, 1: 0.47, 2: 0.53}
  # To unimatch: differences 0.01, 0.01, 0.03 (mean 0.0167, sd 0.01155, t_2 = 4.3027):
  # half-width 4.3027 * 0.01155 / sqrt(3) = 0.0287. To unet: 0.06, 0.05, 0.09.
  base = rec['difference_to_base']
  assert base['arm'] == 'unimatch' and base['pairs'] == 3
  np.testing.assert_allclose([base['mean'], base['low'], base['high']],
                             [0.05 / 3, 0.05 / 3 - 0.02869, 0.05 / 3 + 0.02869], atol=1e-4)
  np.testing.assert_allclose(rec['difference_to_unet']['mean'], 0.2 / 3)
  table = weak_views.markdown(rows)
  assert ('| 5% | flips_scale_crop | unimatch_rec | 0, 1, 2 | 46.0 / 47.0 / 53.0 | '
          '+6.7 [+1.5, +11.8] | – | – | unimatch: +1.7 [-1.2, +4.5] |') in table


def test_the_shipped_semisup_recipe_is_the_grids_tuned_unimatch():
  from configs import folder_semisup, unimatch_folder, unimatch_scenes
  config, overrides = le.TUNING['unimatch']['data_views_adaptive']
  point = {}
  for override in overrides:
    key, value = override.removeprefix('--').split('=', 1)
    try:
      point[key] = ast.literal_eval(value)
    except ValueError:
      point[key] = value   # A bare word: a string field.
  assert config == 'unimatch_folder' and len(point) == 4
  tuned = sweep.apply_overrides(unimatch_folder.get_config(), point)
  assert folder_semisup.get_config().to_dict() == tuned.to_dict()
  scenes = unimatch_scenes.get_config()
  assert scenes.objective_params.to_dict() == tuned.objective_params.to_dict()
  assert scenes.data.strong_augment.to_dict() == tuned.data.strong_augment.to_dict()


TINY = ['--arms=unet,unet_strong', '--seeds=0,1', '--fractions=5pct', '--extra_seeds=',
        '--steps=30', '--eval_every=10', '--tune_steps=2', '--num_train=100', '--num_test=20',
        '--num_validation=20', '--labeled_per_step=2', '--override=--config.model.features=(8,16)',
        '--override=--config.log_every_steps=1', '--override=--config.eval_batch_size=20',
        '--long_steps=40', '--long_arms=unet_strong', '--long_seeds=0', '--weak_view=flips']


def _harness(workdir):
  return [sys.executable, '-m', 'benchmarks.label_efficiency', f'--workdir={workdir}', *TINY,
          f'--output={workdir}/out.jsonl', f'--table={workdir}/table.md',
          f'--plot={workdir}/curves.png']


@pytest.mark.faults
def test_tiny_grid_pairs_subsets_reads_back_finished_runs_and_resumes_an_interrupted_one(
    tmp_path):
  """2 arms x 2 seeds of 30 steps (and one longer run of 40) on 100 tiny scenes: the harness
  killed inside its first grid run, then run to the end and once more."""
  from conftest import cpu_env, logged_step
  from segae_jax import data
  workdir = str(tmp_path / 'le')
  first = os.path.join(workdir, 'runs', '5pct', 'unet', 'seed0')
  proc = subprocess.Popen(_harness(workdir), cwd=ROOT, env=cpu_env(1), start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while logged_step(first) < 15:  # A checkpoint at step 10, none at 20 yet.
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # The harness and its train.py.
  proc.communicate()
  assert not os.path.exists(os.path.join(first, 'results.json'))

  done = subprocess.run(_harness(workdir), cwd=ROOT, env=cpu_env(1), capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.load(open(os.path.join(first, 'results.json')))['resumed_from_step'] == 10
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'out.jsonl'))]
  runs = {r['figure']: r for r in rows if r['figure'].startswith('run/')}
  assert sorted(runs) == [f'run/5pct/{a}/seed{s}' for a in ('unet', 'unet_strong')
                          for s in (0, 1)]
  # The reference's weak view, checked at the grid's length (flips, flips + scale-crop).
  # Over three seeds (TUNE_SEEDS): its own subsets and initialisations, in run dirs of their own.
  tune = {(r['figure'], r['seed'], r['steps']) for r in rows
          if r['figure'].startswith('tune/unet_views/')}
  assert tune == {(f'tune/unet_views/{v}', s, 30) for v in ('flips', 'flips_scale_crop')
                  for s in (100, 1, 2)}
  config = json.load(open(os.path.join(workdir, 'tune', 'unet_views', 'flips_seed1',
                                       'config.json')))
  assert config['seed'] == 1
  long = [r for r in rows if r['figure'] == 'long/5pct/unet_strong/seed0']
  assert len(long) == 1 and long[0]['steps'] == 40
  assert '| longer runs: labels |' in open(os.path.join(workdir, 'table.md')).read()
  assert all([step for step, _ in r['curve']] == [10, 20, 30] for r in runs.values())
  # Paired: every arm of a seed trains on the same images with the same subset and seed.
  configs = {f: json.load(open(os.path.join(workdir, f.replace('run/', 'runs/'),
                                            'config.json'))) for f in runs}
  for seed in (0, 1):
    same = [configs[f'run/5pct/{arm}/seed{seed}'] for arm in ('unet', 'unet_strong')]
    for key in ('seed', 'labeled_fraction'):
      assert same[0][key] == same[1][key]
    assert same[0]['data']['images_dir'] == same[1]['data']['images_dir']
    assert same[1]['objective'] == 'supervised_strong'
  subsets = [set(data.labeled_subset(100, 0.05, s).tolist()) for s in (0, 1)]
  assert len(subsets[0]) == 5 and subsets[0] != subsets[1]  # Per seed, not one for all.
  summary = [r for r in rows if r['figure'] == 'arm/5pct/unet_strong'][0]
  assert summary['difference_to_unet']['pairs'] == 2
  assert os.path.getsize(os.path.join(workdir, 'curves.png')) > 0

  stamps = {f: os.path.getmtime(os.path.join(workdir, f.replace('run/', 'runs/'),
                                             'results.json')) for f in runs}
  again = subprocess.run(_harness(workdir), cwd=ROOT, env=cpu_env(1), capture_output=True,
                         text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert '# ' not in again.stdout   # No run was started again.
  assert stamps == {f: os.path.getmtime(os.path.join(workdir, f.replace('run/', 'runs/'),
                                                     'results.json')) for f in runs}
  assert [json.loads(line) for line in open(os.path.join(workdir, 'out.jsonl'))] == rows


  # Scale-crop as every arm's weak view (--weak_view; auto takes it from the check): the runs
  # apart from flips', with the view in their config.
  crop = subprocess.run([*_harness(workdir), '--weak_view=flips_scale_crop', '--arms=unet',
                         '--seeds=0', '--long_steps=0'], cwd=ROOT, env=cpu_env(1),
                        capture_output=True, text=True, timeout=900)
  assert crop.returncode == 0, crop.stderr[-3000:]
  config = json.load(open(os.path.join(workdir, 'runs_flips_scale_crop', '5pct', 'unet', 'seed0',
                                       'config.json')))
  assert config['data']['augment']['crop_min_scale'] == 0.7
  assert 'weak view: flips_scale_crop' in open(os.path.join(workdir, 'table.md')).read()


def test_a_ledger_table_or_figure_that_cannot_be_written_is_one_line_and_keeps_the_old(
    tmp_path, monkeypatch, capsys):
  from benchmarks import weak_views  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from test_write_faults import Faults, leftovers  # pylint: disable=import-outside-toplevel
  run = tmp_path / 'grid' / 'runs' / '5pct' / 'unet' / 'seed0'
  run.mkdir(parents=True)
  (run / 'results.json').write_text(json.dumps({'test': {'miou': 0.4}}))
  ledger = tmp_path / 'out' / 'ledger.jsonl'
  ledger.parent.mkdir()
  ledger.write_text('{"old": 1}\n')
  # The disk fills half-way through the ledger: one line naming it, exit 2, the old file kept.
  Faults('ledger.jsonl', 'write', code='ENOSPC').install(monkeypatch.setattr)
  with pytest.raises(SystemExit) as exit_:
    weak_views.main([f'--workdir={tmp_path / "grid"}', f'--output={ledger}'])
  monkeypatch.undo()
  error = capsys.readouterr().err
  assert exit_.value.code == 2 and error.count('\n') == 1
  assert error == f'error: cannot write {ledger}: No space left on device (ENOSPC)\n'
  assert ledger.read_text() == '{"old": 1}\n' and leftovers(tmp_path / 'out') == []
  # A figure: written whole through a temporary file, or not at all (the last one kept).
  figure = Figure()
  figure.add_subplot().plot([0, 1])
  (tmp_path / 'out' / 'curves.png').write_bytes(b'the last figure')
  Faults('curves.png', 'write', code='ENOSPC').install(monkeypatch.setattr)
  with pytest.raises(writers.WriteFailed, match=r'curves\.png: No space left'):
    le.save_figure(figure, str(tmp_path / 'out' / 'curves.png'))
  monkeypatch.undo()
  assert (tmp_path / 'out' / 'curves.png').read_bytes() == b'the last figure'
  assert sorted(os.listdir(tmp_path / 'out')) == ['curves.png', 'ledger.jsonl']
  le.save_figure(figure, str(tmp_path / 'out' / 'curves.png'))
  assert (tmp_path / 'out' / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
