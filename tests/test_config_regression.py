"""Every shipped config trains as it did before issue 35's restructuring: the same logged
training metrics at each step and the same final state (params, batch statistics, the
objective's state), bit for bit, and the same test metrics (tests/config_runs.py made the record,
tests/data/config_runs.json, at the commit before the change).

On another machine kind (another JAX version or CPU feature set, whose XLA code may round
differently) the comparison is to 1e-4 relative, and the state by its magnitudes.
"""
import json
import os

import numpy as np
import pytest

import config_runs

RECORD = json.load(open(config_runs.RECORD)) if os.path.exists(config_runs.RECORD) else None
SAME_MACHINE = RECORD is not None and RECORD['machine'] == config_runs.machine()
# The default suite trains one (the teacher objective on scenes: views, objective package, U-Net
# encode/decode, inference-layer scoring); every other config is in make test-faults.
DEFAULT_SUITE = ('fixmatch_scenes',)


def _compare(name, got, want):
  assert [sorted(m) for m in got['train']] == [sorted(m) for m in want['train']], name
  if SAME_MACHINE:
    assert got['train'] == want['train'], name
    assert got['state_sha256'] == want['state_sha256'], name
    assert got['test'] == want['test'], name
    return
  for g, w in zip(got['train'], want['train']):
    for key in w:
      np.testing.assert_allclose(g[key], w[key], rtol=1e-4, atol=1e-6, err_msg=f'{name} {key}')
  assert got['magnitudes'].keys() == want['magnitudes'].keys()
  for key in want['magnitudes']:
    np.testing.assert_allclose(got['magnitudes'][key], want['magnitudes'][key], rtol=1e-4,
                               err_msg=f'{name} {key}')
  for key in want['test']:
    np.testing.assert_allclose(got['test'][key], want['test'][key], rtol=1e-3, atol=1e-4,
                               err_msg=f'{name} test {key}')


def test_the_record_covers_every_shipped_config():
  assert RECORD is not None, config_runs.RECORD
  assert sorted(RECORD['configs']) == config_runs.shipped()
  assert RECORD['steps'] == config_runs.STEPS


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """The runs' data (Fashion-MNIST, scenes, folders, pets), made once for this module."""
  return str(tmp_path_factory.mktemp('config_runs_data'))


def _params(names):
  return [pytest.param(n, marks=() if n in DEFAULT_SUITE else pytest.mark.faults)
          for n in names]


@pytest.mark.parametrize('name', _params(config_runs.shipped()))
def test_shipped_config_trains_as_recorded(name, data_dir, tmp_path):
  if RECORD is None or name not in RECORD['configs']:
    pytest.fail(f'{name} has no record in {config_runs.RECORD}')
  got = config_runs.train(name, data_dir, str(tmp_path / 'run'))
  _compare(name, got, RECORD['configs'][name])
