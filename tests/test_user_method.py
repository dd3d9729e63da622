"""docs/api.md's complete user method (two strong views + feature perturbation, in a module of the
user's own) trains, as written there, through segae-train run from another folder: the code block
is read from the page, so the docs and the test cannot drift apart."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SCENES

DOC = os.path.join(ROOT, 'docs', 'api.md')


def _method_source() -> str:
  """The ```python block of docs/api.md that starts with '# mymethod.py'."""
  blocks = re.findall(r'```python\n(.*?)```', open(DOC).read(), re.S)
  found = [b for b in blocks if b.startswith('# mymethod.py')]
  assert len(found) == 1, 'docs/api.md has no single mymethod.py block'
  return found[0]


def _flags(overrides):
  return [f'--config.{k}={",".join(map(str, v)) if isinstance(v, tuple) else v}'
          for k, v in overrides.items()]


@pytest.mark.faults  # About 40 s: a subprocess training of 4 steps with 4 passes of the pool.
def test_the_documented_method_trains_from_another_folder(tmp_path, tfds_dir):
  folder = tmp_path / 'lab'
  folder.mkdir()
  (folder / 'mymethod.py').write_text(_method_source())
  # The user's config: the shipped scenes U-Net with the method and its fields (threshold 0: every
  # pixel of the untrained teacher counts, so each unlabelled term is seen).
  (folder / 'my_config.py').write_text(
      'from configs import unet_scenes\n\n\ndef get_config():\n'
      '  config = unet_scenes.get_config()\n'
      "  config.objective = 'unimatch_lite'\n"
      "  config.objective_params = {'threshold': 0.0, 'feature_dropout': 0.5}\n"
      '  return config\n')
  segae_train = os.path.join(os.path.dirname(sys.executable), 'segae-train')
  small = {**SCENES, 'labeled_fraction': 0.25, 'data.unlabeled_per_batch': 8, 'batch_size': 16,
           'data.tfds_dir': tfds_dir, 'log_every_steps': 1, 'warmup_steps': 1}
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run(
      [segae_train, '--config=my_config.py', f'--workdir={folder / "runs" / "unimatch_lite"}',
       "--config.plugins=('mymethod',)", '--config.objective_params.threshold=0.0',
       *_flags(small)],
      cwd=str(folder), capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdir = folder / 'runs' / 'unimatch_lite'
  steps = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  steps = [s for s in steps if 'train/loss' in s]
  assert [s['step'] for s in steps][-1] == SCENES['num_train_steps']
  for s in steps:
    parts = [s[f'train/{k}_ce'] for k in ('strong_1', 'strong_2', 'fp')]
    assert all(p > 0 for p in parts) and s['train/confident_fraction'] == 1.0
    # The weights of the documented method: (x + 0.25 s1 + 0.25 s2 + 0.5 fp) / 2.
    assert s['train/loss'] == pytest.approx(
        (s['train/seg_ce'] + 0.25 * parts[0] + 0.25 * parts[1] + 0.5 * parts[2]) / 2, rel=1e-5)
  # Feature dropout makes the perturbed pass differ from the two strong ones.
  assert len({round(v, 6) for v in parts}) == 3
  results = json.load(open(workdir / 'results.json'))
  assert 0.0 <= results['test']['miou'] <= 1.0
