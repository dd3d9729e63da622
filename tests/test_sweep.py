"""segae_jax.tools.sweep: the pure helpers, one real 2-point sweep (run, resume, refusal) and the
one-line errors for bad input."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from segae_jax.tools import sweep
from segae_jax.errors import UserInputError

DEFAULT = os.path.join(ROOT, 'configs', 'default.py')
SMALL = {'config.num_train_steps': 4, 'config.warmup_steps': 1, 'config.batch_size': 32,
         'config.log_every_steps': 2, 'config.eval_every_steps': 4,
         'config.checkpoint_every_steps': 2, 'config.num_pictures': 4,
         'config.eval_batch_size': 1000, 'config.model.hidden_dim': 32,
         'config.data.cache': 'stream'}  # Reads only what it uses: 4 batches and the test split.
GRID = '{"config.beta": [4, 0.5]}'


def run_sweep(*args):
  cmd = [sys.executable, '-m', 'segae_jax.tools.sweep', *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------ pure helpers --


def test_grid_points_cartesian_product_in_key_order():
  points = sweep.grid_points({'config.beta': [0.5, 1, 4], 'config.model.latent_dim': [16, 32]})
  assert points == [
      {'config.beta': 0.5, 'config.model.latent_dim': 16},
      {'config.beta': 0.5, 'config.model.latent_dim': 32},
      {'config.beta': 1, 'config.model.latent_dim': 16},
      {'config.beta': 1, 'config.model.latent_dim': 32},
      {'config.beta': 4, 'config.model.latent_dim': 16},
      {'config.beta': 4, 'config.model.latent_dim': 32},
  ]
  assert [list(p) for p in points] == [['config.beta', 'config.model.latent_dim']] * 6
  with pytest.raises(UserInputError, match="'config.beta'.*empty"):
    sweep.grid_points({'config.beta': []})
  with pytest.raises(UserInputError, match="'config.beta'.*list"):
    sweep.grid_points({'config.beta': 4})


SPACE = {'config.learning_rate': {'log_uniform': [1e-4, 1e-2]},
         'config.beta': {'uniform': [0.5, 4]},
         'config.model.latent_dim': {'choice': [16, 32, 64]},
         'config.warmup_steps': {'int_uniform': [1, 3]}}


def test_random_points_seeded_and_within_ranges():
  a = sweep.random_points(SPACE, 50, seed=0)
  assert a == sweep.random_points(SPACE, 50, seed=0)
  b = sweep.random_points(SPACE, 50, seed=1)
  assert a != b
  assert a[:5] == sweep.random_points(SPACE, 5, seed=0)  # Point i does not depend on N.
  for p in a + b:
    assert list(p) == list(SPACE)
    assert 1e-4 <= p['config.learning_rate'] <= 1e-2
    assert 0.5 <= p['config.beta'] <= 4 and isinstance(p['config.beta'], float)
    assert p['config.model.latent_dim'] in (16, 32, 64)
    assert type(p['config.model.latent_dim']) is int
    assert p['config.warmup_steps'] in (1, 2, 3) and type(p['config.warmup_steps']) is int
  assert {p['config.model.latent_dim'] for p in a} == {16, 32, 64}
  assert {p['config.warmup_steps'] for p in a} == {1, 2, 3}
  json.dumps(a)  # Plain Python values: they go into sweep.json.


def test_log_uniform_is_uniform_in_log_space():
  lrs = np.array([p['x'] for p in sweep.random_points({'x': {'log_uniform': [1e-4, 1e-2]}},
                                                      2000, seed=3)])
  assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
  assert lrs.min() < 1.2e-4 and lrs.max() > 0.8e-2  # Spread over the whole range.
  # Half the mass below the geometric midpoint 1e-3 (a uniform draw would put 9 % there),
  # each decade about equally filled.
  assert abs(np.mean(lrs < 1e-3) - 0.5) < 0.05
  logs = np.log10(lrs)
  assert abs(np.median(logs) + 3) < 0.1
  counts, _ = np.histogram(logs, bins=4, range=(-4, -2))
  assert counts.min() > 400


def test_random_points_bad_space():
  with pytest.raises(UserInputError, match="'config.beta'.*unknown distribution 'normal'"):
    sweep.random_points({'config.beta': {'normal': [0, 1]}}, 3, seed=0)
  with pytest.raises(UserInputError, match='0 < low'):
    sweep.random_points({'x': {'log_uniform': [0, 1]}}, 3, seed=0)
  with pytest.raises(UserInputError, match='low <= high'):
    sweep.random_points({'x': {'uniform': [2, 1]}}, 3, seed=0)
  with pytest.raises(UserInputError, match='non-empty'):
    sweep.random_points({'x': {'choice': []}}, 3, seed=0)
  with pytest.raises(UserInputError, match='at least 1'):
    sweep.random_points({'x': {'choice': [1]}}, 0, seed=0)


def test_apply_overrides_on_the_default_config():
  base = sweep.load_config(DEFAULT)
  config = sweep.apply_overrides(base, {'config.beta': 4, 'config.model.latent_dim': 16,
                                        'data.binarize': False, 'config.model.features': [8, 16]})
  assert config.beta == 4.0 and isinstance(config.beta, float)  # An int into a float field.
  assert config.loss.kl == 4.0  # The field reference beta -> loss.kl survives the copy.
  assert config.model.latent_dim == 16 and config.data.binarize is False
  assert config.model.features == (8, 16)
  assert base.beta == 1.0 and base.loss.kl == 1.0 and base.model.latent_dim == 32  # Untouched.
  with pytest.raises(UserInputError, match=r"unknown config key 'config.model.latnt_dim'"):
    sweep.apply_overrides(base, {'config.model.latnt_dim': 16})
  with pytest.raises(UserInputError, match=r"unknown config key 'config.modl.latent_dim'"):
    sweep.apply_overrides(base, {'config.modl.latent_dim': 16})
  with pytest.raises(UserInputError, match=r"'config.beta' holds a float.*'high' \(str\)"):
    sweep.apply_overrides(base, {'config.beta': 'high'})
  with pytest.raises(UserInputError, match=r"'config.model.latent_dim' holds an int"):
    sweep.apply_overrides(base, {'config.model.latent_dim': 16.5})
  with pytest.raises(UserInputError, match=r"'config.data.binarize' holds a bool"):
    sweep.apply_overrides(base, {'config.data.binarize': 1})
  with pytest.raises(UserInputError, match=r"'config.model' is a group of fields"):
    sweep.apply_overrides(base, {'config.model': {'latent_dim': 8}})


def test_overrides_ml_collections_would_accept_are_refused():
  base = sweep.load_config(DEFAULT)
  # ConfigDict would store True in an int field, 1.0 for True in a float field, and None anywhere.
  with pytest.raises(UserInputError, match=r"'config.model.latent_dim' holds an int.*True"):
    sweep.apply_overrides(base, {'config.model.latent_dim': True})
  with pytest.raises(UserInputError, match=r"'beta' holds a float.*True \(bool\)"):
    sweep.apply_overrides(base, {'beta': True})
  with pytest.raises(UserInputError, match=r"'config.beta' holds a float.*None \(NoneType\)"):
    sweep.apply_overrides(base, {'config.beta': None})
  with pytest.raises(UserInputError,
                     match=r"'config.model.latnt_dim'.*no such field; did you mean \"latent_dim\""):
    sweep.apply_overrides(base, {'config.model.latnt_dim': 16})


def test_load_config_reads_each_file_afresh(tmp_path):
  first, second = tmp_path / 'first.py', tmp_path / 'second.py'
  first.write_text('import ml_collections\n\ndef get_config():\n'
                   '  return ml_collections.ConfigDict({"beta": 2.0})\n')
  second.write_text('beta = 3.0\n')
  assert sweep.load_config(str(first)).beta == 2.0
  # The loader reuses a module of the same name: first.py's get_config must not survive.
  with pytest.raises(UserInputError, match=f'config file {second} has no get_config'):
    sweep.load_config(str(second))
  (tmp_path / 'broken.py').write_text('def get_config():\n  raise ValueError("no beta")\n')
  with pytest.raises(UserInputError, match=r'could not be loaded: ValueError: no beta$'):
    sweep.load_config(str(tmp_path / 'broken.py'))


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_config_flag_overrides_are_refused(tmp_path):
  # An invalid point too, so that even a sweep accepting --config.beta trains nothing.
  proc = run_sweep('--config=configs/default.py', f'--workdir={tmp_path}/s', '--config.beta=3',
                   '--grid={"config.batch_size": [0]}')
  assert_one_line_error(proc, '--config.beta', '--set')
  assert not os.path.exists(tmp_path / 's')


def test_point_name_is_short_and_safe():
  assert sweep.point_name({'config.beta': 0.5, 'config.model.latent_dim': 16}) == \
      'beta=0.5,model.latent_dim=16'
  assert sweep.point_name({'config.learning_rate': 0.000123456789}) == 'learning_rate=0.0001235'
  assert sweep.point_name({'config.model.features': [8, 16], 'config.data.binarize': True}) == \
      'model.features=8-16,data.binarize=true'
  name = sweep.point_name({'config.data.tfds_dir': '../a b/c*'})
  assert name == 'data.tfds_dir=.._a_b_c' and '/' not in name
  assert len(sweep.point_name({'config.optimizer': 'x' * 300})) == 80


def test_sort_rows_min_max_and_missing_last():
  rows = [{'run': 'a', 'm': 2.0}, {'run': 'b', 'm': float('nan')}, {'run': 'c', 'm': 1.0},
          {'run': 'd', 'm': 3.0}, {'run': 'e'}]
  assert [r['run'] for r in sweep.sort_rows(rows, 'm', 'min')] == ['c', 'a', 'd', 'b', 'e']
  assert [r['run'] for r in sweep.sort_rows(rows, 'm', 'max')] == ['d', 'a', 'c', 'b', 'e']
  with pytest.raises(UserInputError, match='min or max'):
    sweep.sort_rows(rows, 'm', 'best')


def test_metric_lookup_and_defaults():
  results = {'step': 4, 'test': {'miou': 0.5, 'loss': 1.0, 'per_class': {'bag': {'iou': 0.7}}}}
  assert sweep.get_metric(results, 'test.miou') == 0.5
  with pytest.raises(UserInputError, match=r"'test.neg_elbo'.*available: step, test.miou, "
                                           r"test.loss$"):
    sweep.get_metric(results, 'test.neg_elbo')
  assert sweep.default_metric(results) == 'test.miou' and sweep.default_mode('test.miou') == 'max'
  assert sweep.default_metric({'test': {'loss': 1.0}}) == 'test.loss'
  assert sweep.default_mode('test.neg_elbo') == 'min'


# ------------------------------------------------------------------------- a real sweep --


# The sweep run end to end (a subprocess training two points, about 25 s with the tests on it) is
# with the long checks of `make test-faults` (CI runs it), which keeps the default suite within its
# 4 minutes; the sweep's parts (grids, random points, overrides, tables) are tested above by hand.
LONG = pytest.mark.faults


@pytest.fixture(scope='module')
def swept(tmp_path_factory, tfds_dir):
  """A 2-point grid over beta on configs/default.py, 4 steps each, run as a subprocess."""
  workdir = str(tmp_path_factory.mktemp('sweep') / 'beta')
  args = ['--config=configs/default.py', f'--workdir={workdir}', f'--grid={GRID}',
          '--set=' + json.dumps({**SMALL, 'config.data.tfds_dir': tfds_dir})]
  proc = run_sweep(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'results.csv')) as f:
    csv_text = f.read()
  return {'workdir': workdir, 'args': args, 'stdout': proc.stdout, 'csv': csv_text}


@LONG
def test_sweep_writes_sorted_tables_and_one_run_per_point(swept):
  workdir = swept['workdir']
  names = ['0_beta=4', '1_beta=0.5']
  for name, beta in zip(names, (4.0, 0.5)):
    results = json.load(open(os.path.join(workdir, name, 'results.json')))
    assert results['step'] == 4
    config = json.load(open(os.path.join(workdir, name, 'config.json')))
    assert config['beta'] == beta and config['loss']['kl'] == beta
    assert config['num_train_steps'] == 4 and config['batch_size'] == 32
  rows = list(csv.DictReader(swept['csv'].splitlines()))
  assert len(rows) == 2 and sorted(r['run'] for r in rows) == names
  assert list(rows[0]) == ['run', 'beta', 'test.neg_elbo', 'test.rec_bce', 'test.kl', 'test.loss',
                           'test.psnr', 'train_time_s']
  values = [float(r['test.neg_elbo']) for r in rows]
  assert values == sorted(values) and all(100 < v < 700 for v in values)
  for r in rows:
    results = json.load(open(os.path.join(workdir, r['run'], 'results.json')))
    assert float(r['test.neg_elbo']) == results['test']['neg_elbo']
    assert float(r['train_time_s']) == results['train_time_s'] > 0
    assert float(r['beta']) == {'0_beta=4': 4.0, '1_beta=0.5': 0.5}[r['run']]
  md = open(os.path.join(workdir, 'results.md')).read().strip().splitlines()
  table = [line for line in md if line.startswith('|')]
  assert len(table) == 4 and table[1].startswith('|---|')
  assert table[0].startswith('| run | beta | test.neg_elbo |')
  assert [line.split(' | ')[0][2:] for line in table[2:]] == [r['run'] for r in rows]
  assert '\n'.join(table) in swept['stdout']
  definition = json.load(open(os.path.join(workdir, 'sweep.json')))['definition']
  assert definition['grid'] == json.loads(GRID) and definition['set']['config.batch_size'] == 32


def _mtimes(workdir):
  return {name: os.stat(os.path.join(workdir, name, 'results.json')).st_mtime_ns
          for name in ('0_beta=4', '1_beta=0.5')}


@LONG
def test_rerun_reads_finished_points_and_sorts_by_mode(swept):
  workdir = swept['workdir']
  before = _mtimes(workdir)
  start = time.perf_counter()
  proc = run_sweep(*swept['args'], '--mode=max')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert time.perf_counter() - start < 30  # No training: about 2 s on an idle machine.
  assert '2 finished, 0 to run' in proc.stdout and 'training' not in proc.stdout
  assert _mtimes(workdir) == before
  rows = list(csv.DictReader(open(os.path.join(workdir, 'results.csv'))))
  values = [float(r['test.neg_elbo']) for r in rows]
  assert values == sorted(values, reverse=True)
  assert len(rows) == 2


@LONG
def test_unfinished_point_resumes_from_its_checkpoint(swept):
  workdir = swept['workdir']
  path = os.path.join(workdir, '1_beta=0.5', 'results.json')
  old = json.load(open(path))
  # As if the point had been stopped between its checkpoints at steps 2 and 4.
  os.remove(path)
  shutil.rmtree(os.path.join(workdir, '1_beta=0.5', 'checkpoints', '4'))
  proc = run_sweep(*swept['args'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '1 finished, 1 to run' in proc.stdout and 'training 1_beta=0.5' in proc.stdout
  new = json.load(open(path))
  assert new['step'] == 4 and new['resumed_from_step'] == 2  # Trained steps 3 and 4 again.
  assert new['test'] == old['test']  # Exact resume: the same model as the first time.
  rows = list(csv.DictReader(open(os.path.join(workdir, 'results.csv'))))
  assert len(rows) == 2


@LONG
def test_changed_sweep_in_the_same_workdir_is_refused(swept):
  workdir = swept['workdir']
  recorded = open(os.path.join(workdir, 'sweep.json')).read()
  args = [a for a in swept['args'] if not a.startswith('--grid=')]
  proc = run_sweep(*args, '--grid={"config.beta": [4, 0.5, 2]}')
  assert_one_line_error(proc, 'holds a different sweep', 'grid')
  assert open(os.path.join(workdir, 'sweep.json')).read() == recorded
  assert sorted(n for n in os.listdir(workdir) if '_beta=' in n) == ['0_beta=4', '1_beta=0.5']


@LONG
def test_metric_missing_from_results_names_the_available_ones(swept):
  proc = run_sweep(*swept['args'], '--metric=test.miou')
  assert_one_line_error(proc, "metric 'test.miou' is not in the results", 'test.neg_elbo',
                        'train_time_s')


# --------------------------------------------------------------------------- bad input --


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
@pytest.mark.parametrize('args,fragments', [
    (['--grid={"config.beta": [1, 2'], ['--grid is not valid JSON']),
    (['--grid=[1, 2]'], ['--grid must be a JSON object']),
    (['--grid={"config.beta": [1, 2]}', '--random=3', '--space={"config.beta": {"uniform": [0, 1]}}'],
     ['exactly one of --grid or --random']),
    ([], ['exactly one of --grid or --random']),
    (['--grid={"config.beta": [1], "config.model.latnt_dim": [16]}'],
     ["unknown config key 'config.model.latnt_dim'"]),
    (['--grid={"config.beta": [1, "high"]}'], ["'config.beta' holds a float", "'high'"]),
    (['--grid={"config.beta": []}'], ["'config.beta'", 'empty']),
    (['--random=3', '--space={"config.beta": {"normal": [0, 1]}}'],
     ["unknown distribution 'normal'", 'log_uniform']),
    (['--grid={"config.beta": [1]}', '--set={"config.num_train_step": 4}'],
     ["unknown config key 'config.num_train_step'"]),
    (['--grid={"config.batch_size": [32, 0]}'], ['point batch_size=0', 'positive integer']),
], ids=['invalid-json', 'not-object', 'both', 'neither', 'unknown-key', 'wrong-type',
        'empty-list', 'unknown-distribution', 'unknown-set-key', 'invalid-value'])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
  workdir = str(tmp_path / 'sweep')
  proc = run_sweep('--config=configs/default.py', f'--workdir={workdir}', *args)
  assert_one_line_error(proc, *fragments)
  assert not os.path.exists(workdir)  # Refused before anything is written.


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_missing_config_file(tmp_path):
  proc = run_sweep('--config=configs/nope.py', f'--workdir={tmp_path}/s',
                   '--grid={"config.beta": [1]}')
  assert_one_line_error(proc, 'config file configs/nope.py does not exist')


def test_markdown_table_by_hand():
  rows = [{'run': 'a', 'x': 0.123456, 'y': None}, {'run': 'b|c', 'x': [1, 2], 'y': 3}]
  assert sweep.markdown_table(rows, ['run', 'x', 'y']) == (
      '| run | x | y |\n|---|---|---|\n| a | 0.1235 |  |\n| b\\|c | [1, 2] | 3 |\n')
