"""Plug-ins from the user's own code (segae_jax/plugins.py, config.plugins): modules written here,
outside the package, register a loss term and an objective with the public decorators, and
segae-train (train.py, run from another directory) trains with them by name, building the
objective once; a module that fails to import and a name registered twice are one line and exit
status 2. Also the registry's
refusal of a taken name and its aliases."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from segae_jax import plugins
from segae_jax.errors import UserInputError
from segae_jax.registry import Registry

# A user's module: a loss term and an objective of its own (the base objective, its loss scaled).
PLUGIN = '''
import jax.numpy as jnp
import segae_jax
from segae_jax.training import objectives


@segae_jax.register_loss('my_l1')
def my_l1(outputs, batch, axis_name=None):
  """Mean absolute error of the reconstruction's probabilities."""
  value = jnp.mean(jnp.abs(jax_sigmoid(outputs['rec_logits']) - batch['image']))
  return value, {'my_l1': value}


def jax_sigmoid(x):
  return 1.0 / (1.0 + jnp.exp(-x))


@segae_jax.register_objective('scaled')
class Scaled(objectives.Objective):
  name = 'scaled'
  defaults = {'scale': 1.0}
  built = 0   # How many times a run made it (once: training.validation.validate_run).

  def __init__(self, facts, params):
    super().__init__(facts, params)
    Scaled.built += 1

  def loss(self, params, state, batch, rngs, axis_name):
    loss, metrics, stats = super().loss(params, state, batch, rngs, axis_name)
    metrics['scale'] = jnp.float32(self.params['scale'])
    metrics['built'] = jnp.float32(Scaled.built)
    metrics['loss'] = self.params['scale'] * loss
    return metrics['loss'], metrics, stats
'''

CONFIG = '''
import ml_collections
from configs import default


def get_config():
  config = default.get_config()
  config.loss = ml_collections.ConfigDict({'my_l1': 1.0, 'kl': 0.01})
  config.objective = 'scaled'
  config.objective_params = ml_collections.ConfigDict({'scale': 0.5})
  return config
'''

RUN = ['--config.num_train_steps=2', '--config.warmup_steps=1', '--config.batch_size=16',
       '--config.eval_batch_size=1000', '--config.log_every_steps=1',
       '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
       '--config.num_pictures=4', '--config.model.features=(8, 16)',
       '--config.model.hidden_dim=32']


def _write(folder, name, text):
  path = os.path.join(str(folder), name)
  with open(path, 'w') as f:
    f.write(textwrap.dedent(text))
  return path


def _train(cwd, *args, tfds_dir):
  """train.py run from `cwd` (not the repository: sys.path does not hold cwd)."""
  cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *args,
         f'--config.data.tfds_dir={tfds_dir}']
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=600, env=env)


def _one_line_error(proc, text):
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and text in errors[0], proc.stderr[-3000:]
  assert proc.stderr.rstrip('\n').splitlines()[-1] == errors[0]


@pytest.mark.faults  # A subprocess training, about 15 s.
def test_a_plugin_loss_and_objective_train_from_another_directory(tmp_path, tfds_dir):
  _write(tmp_path, 'mymod.py', PLUGIN)
  config = _write(tmp_path, 'my_config.py', CONFIG)
  workdir = tmp_path / 'run'
  proc = _train(tmp_path, f'--config={config}', f'--workdir={workdir}',
                "--config.plugins=('mymod',)", *RUN, tfds_dir=tfds_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  steps = [r for r in records if 'train/loss' in r]
  assert steps and steps[-1]['step'] == 2
  for r in steps:
    assert r['train/scale'] == 0.5 and r['train/my_l1'] > 0 and r['train/built'] == 1
    assert r['train/loss'] == pytest.approx(0.5 * (r['train/my_l1'] + 0.01 * r['train/kl']),
                                            rel=1e-5)
  assert json.load(open(workdir / 'config.json'))['plugins'] == ['mymod']
  # The tools restore the run with its plug-ins, loaded again from its config.json.
  code = (f'from segae_jax.tools import common; run = common.load_run({str(workdir)!r}); '
          'import sys; print(run.step, "mymod" in sys.modules)')
  restored = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=300)
  assert restored.returncode == 0, restored.stderr[-3000:]
  assert restored.stdout.split()[-2:] == ['2', 'True']


def test_a_plugin_that_fails_to_import_is_one_line_and_exit_2(tmp_path, tfds_dir):
  _write(tmp_path, 'broken.py', 'import segae_jax\nvalue = 1 / 0\n')
  proc = _train(tmp_path, '--config=default', f'--workdir={tmp_path / "run"}',
                "--config.plugins=('broken',)", *RUN, tfds_dir=tfds_dir)
  _one_line_error(proc, 'config.plugins: broken failed to import')
  assert 'ZeroDivisionError' in proc.stderr and not os.path.exists(tmp_path / 'run')


def test_a_plugin_registering_a_taken_name_is_one_line_and_exit_2(tmp_path, tfds_dir):
  _write(tmp_path, 'clash.py', '''
      import segae_jax

      @segae_jax.register_objective('fixmatch')
      class Mine:
        pass
      ''')
  proc = _train(tmp_path, '--config=default', f'--workdir={tmp_path / "run"}',
                f'--config.plugins=("{tmp_path / "clash.py"}",)', *RUN, tfds_dir=tfds_dir)
  _one_line_error(proc, "objective 'fixmatch' is registered twice")


# -------------------------------------------------------------------------------------------
# In process.

def test_load_imports_names_from_the_current_directory_and_paths_once(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(tmp_path / 'nothing'))  # Restores sys.path afterwards.
  _write(tmp_path, 'plug_counted.py', 'import builtins\nbuiltins.plug_count = '
         'getattr(builtins, "plug_count", 0) + 1\n')
  sub = tmp_path / 'sub'
  sub.mkdir()
  path = _write(sub, 'plug_by_path.py', 'VALUE = 3\n')
  monkeypatch.chdir(tmp_path)
  try:
    first = plugins.load(('plug_counted', path))
    again = plugins.load(['plug_counted', path])
    import builtins
    assert builtins.plug_count == 1 and first == again and first[1].VALUE == 3
    assert plugins.load(()) == [] and plugins.load(None) == []
  finally:
    for name in ('plug_counted', 'plug_by_path'):
      sys.modules.pop(name, None)


@pytest.mark.parametrize('entry,text', [
    ('no_such_plugin_module', "config.plugins: no module 'no_such_plugin_module'"),
    ('missing/file.py', 'config.plugins: missing/file.py does not exist'),
    ('plug_needs_dep', r"failed to import \(.*plug_needs_dep.py:1\): ModuleNotFoundError: No "
                       r"module named 'not_installed_dep'"),
    ('plug_raises', r'failed to import .*: ValueError: bad plugin'),
])
def test_load_failures_are_one_line(tmp_path, monkeypatch, entry, text):
  _write(tmp_path, 'plug_needs_dep.py', 'import not_installed_dep\n')
  _write(tmp_path, 'plug_raises.py', 'raise ValueError("bad\\nplugin")\n')
  monkeypatch.chdir(tmp_path)
  from segae_jax import cli
  with pytest.raises(UserInputError, match=text) as error:
    plugins.load((entry,))
  assert 'error:' not in str(error.value)
  assert len(('error: ' + ' '.join(str(error.value).split())).splitlines()) == 1  # cli.fail's.
  assert cli.EXIT_BAD_INPUT == 2


def test_registry_refuses_a_taken_name_and_lists_aliases():
  registry = Registry('widget')
  registry.register('a')(int)
  with pytest.raises(UserInputError, match="widget 'a' is registered twice"):
    registry.register('a')(float)
  registry.alias('b', 'a')
  assert registry.get('b') is int and 'b' in registry and registry.canonical('b') == 'a'
  assert registry.names() == ['a', 'b (= a)']
  with pytest.raises(UserInputError, match="widget 'b' is registered twice"):
    registry.register('b')
  with pytest.raises(UserInputError, match="unknown widget 'c'; known: a, b \\(= a\\)"):
    registry.alias('d', 'c')


def test_the_public_decorators_are_the_registries_and_import_segae_jax_stays_light():
  code = ('import sys, segae_jax; assert "jax" not in sys.modules; '
          'from segae_jax.training import objectives; from segae_jax import losses, models, data;'
          'from segae_jax.data import views;'
          'assert segae_jax.register_objective.__self__ is objectives.OBJECTIVES;'
          'assert segae_jax.register_loss.__self__ is losses.LOSSES;'
          'assert segae_jax.register_model.__self__ is models.MODELS;'
          'assert segae_jax.register_view.__self__ is views.VIEWS;'
          'assert segae_jax.register_dataset.__self__ is data.DATASETS')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
