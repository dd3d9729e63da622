"""Runs that survive: non-finite steps, damaged checkpoints, preemption (SIGTERM/SIGINT), crashes
(SIGKILL at random steps), another device count on resume, and multi-process training on
127.0.0.1. Tests that train whole runs are marked `faults` (`make test-faults`, which CI runs after
`make test`); the default run keeps the fast ones."""
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import (ROOT, assert_trees_equal, cpu_env, logged_step, run_train, saved_state,
                      small_config)
from segae_jax.training import checkpoints, objectives
from segae_jax import models, training
from segae_jax.errors import TrainingDiverged, UserInputError
from test_write_faults import TMP_SUFFIX, leftovers

# A small VAE on the real Fashion-MNIST: fast enough for several processes per test. No
# binarisation: its noise is drawn per process, so runs with other process counts would differ.
TINY = ['--config=configs/default.py', '--config.warmup_steps=2', '--config.batch_size=32',
        '--config.log_every_steps=1', '--config.eval_every_steps=1000',
        '--config.num_pictures=4', '--config.model.features=(8,16)',
        '--config.model.hidden_dim=32', '--config.model.latent_dim=4',
        '--config.data.binarize=False', '--config.eval_batch_size=2000']


def _tiny_overrides(**extra):
  return {'model.features': (8, 16), 'model.hidden_dim': 32, 'model.latent_dim': 4,
          'data.binarize': False, **extra}


def _state(workdir, step=None):
  """The saved {'train_state', 'rng'} of a workdir's checkpoint (latest by default) as numpy,
  restored into the structure of a freshly built state."""
  config = small_config('', **_tiny_overrides())
  model = models.build(config.model, (28, 28, 1))
  target = {'train_state': training.create_train_state(config, model, (28, 28, 1),
                                                       jax.random.PRNGKey(0)),
            'rng': jax.random.PRNGKey(0)}
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'))
  step = ckpt.latest_step() if step is None else step
  tree, _ = ckpt.restore(step, target)
  ckpt.close()
  return {'params': tree['train_state'].params, 'opt_state': tree['train_state'].opt_state,
          'step': tree['train_state'].step, 'rng': tree['rng']}


# ----------------------------------------------------------------------------- non-finite steps


def test_train_step_keeps_the_state_on_a_nonfinite_batch(tfds_dir, fashion_mnist):
  config = small_config(tfds_dir, **_tiny_overrides(warmup_steps=0))  # Step 0 moves.
  model = models.build(config.model, (28, 28, 1))
  state = training.create_train_state(config, model, (28, 28, 1), jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(training.train_step, objective=objectives.plain(config)))
  batch = fashion_mnist.preprocess(fashion_mnist.train.__getitems__(np.arange(8)), None)
  good, metrics = step(state, batch, jax.random.PRNGKey(1))
  assert float(metrics['nonfinite']) == 0.0 and int(good.step) == 1
  assert not np.array_equal(good.params['decoder']['hidden']['kernel'],
                            state.params['decoder']['hidden']['kernel'])
  poisoned = dict(batch, image=batch['image'].copy())
  poisoned['image'][3, 5, 5, 0] = np.nan
  after, metrics = step(good, poisoned, jax.random.PRNGKey(2))
  assert float(metrics['nonfinite']) == 1.0 and not np.isfinite(float(metrics['loss']))
  assert int(after.step) == 2  # The step advances; nothing else moves.
  assert_trees_equal(after.params, good.params)
  assert_trees_equal(after.opt_state, good.opt_state)


@pytest.mark.faults
def test_divergence_stops_keeps_last_good_checkpoint(tmp_path, tfds_dir):
  config = small_config(tfds_dir, **_tiny_overrides(
      learning_rate=1e9, num_train_steps=30, checkpoint_every_steps=1, log_every_steps=10,
      eval_every_steps=1000))
  workdir = str(tmp_path / 'w')
  with pytest.raises(TrainingDiverged) as error:
    training.train_and_evaluate(config, workdir)
  message = str(error.value)
  bad_step = int(message.split('train step ')[1].split()[0])
  # The warmup's first step has learning rate 0, so step 1 is always good: at least one
  # checkpoint exists before the divergence.
  assert 2 <= bad_step < 30 and 'went non-finite (' in message and '=nan' in message
  steps = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints')).all_steps()
  # Each step before the bad one was checkpointed; the bad state and anything after were not.
  assert steps and max(steps) == bad_step - 1
  assert f'checkpoints/{bad_step - 1}, is the last good state' in message
  saved = _state(workdir)
  assert int(saved['step']) == bad_step - 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved['params']))
  assert error.value.exit_code == 3 and '\n' not in message


@pytest.mark.faults
def test_skip_mode_counts_skipped_steps(tmp_path, tfds_dir):
  config = small_config(tfds_dir, **_tiny_overrides(
      learning_rate=1e9, num_train_steps=12, log_every_steps=4, nonfinite='skip'))
  results = training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert results['step'] == 12 and 1 <= results['skipped_steps'] <= 12
  saved = _state(str(tmp_path / 'w'))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved['params']))
  records = [json.loads(l) for l in open(tmp_path / 'w' / 'metrics.jsonl')]
  counts = [r['train/skipped_steps'] for r in records if 'train/skipped_steps' in r]
  assert counts == sorted(counts) and counts[-1] == results['skipped_steps']


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.faults
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact(tmp_path, tfds_dir, caplog):
  config = small_config(tfds_dir, **_tiny_overrides())  # 6 steps, checkpoints at 3 and 6.
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  training.train_and_evaluate(config, a)
  training.train_and_evaluate(config, b)
  # Damage step 6 of b: every array file cut to half its length.
  state_dir = os.path.join(b, 'checkpoints', '6', 'state')
  cut = 0
  for root, _, files in os.walk(state_dir):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 16 and 'metadata' not in name:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
        cut += 1
  assert cut > 0
  config.num_train_steps = 6
  caplog.set_level('WARNING', logger='segae_jax')
  results = training.train_and_evaluate(config, b)
  assert results['resumed_from_step'] == 3
  assert any('Checkpoint step 6 is damaged' in r.getMessage() and 'resuming from step 3'
             in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert os.path.isdir(os.path.join(b, 'checkpoints.damaged', '6'))  # Kept, not deleted.
  assert_trees_equal(_state(a), _state(b))  # Resumed from 3: the same step 6, bit for bit.


@pytest.mark.faults
def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path, tfds_dir):
  config = small_config(tfds_dir, **_tiny_overrides(num_train_steps=3))
  workdir = str(tmp_path / 'w')
  training.train_and_evaluate(config, workdir)
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', '3', 'state')):
    for name in files:
      os.remove(os.path.join(root, name))
  with pytest.raises(UserInputError, match=r'no intact checkpoint in .*checkpoints: steps 3 fail '
                     r'to read .*move the directory away to start afresh'):
    training.train_and_evaluate(config, workdir)


def test_unwritable_workdir_refused_before_training(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  proc = run_train(*TINY, f'--workdir={blocker / "run"}')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr[-2000:]
  assert f'workdir {blocker / "run"} is not writable' in proc.stderr


# ----------------------------------------------------------------------------- killed processes


def _train_cmd(workdir, steps, *extra):
  return [sys.executable, os.path.join(ROOT, 'train.py'), *TINY, f'--workdir={workdir}',
          f'--config.num_train_steps={steps}', *extra]


def _start_and_wait(workdir, steps, until_step, tfds_dir, *extra, devices=2):
  proc = subprocess.Popen(_train_cmd(workdir, steps, f'--config.data.tfds_dir={tfds_dir}', *extra),
                          cwd=ROOT, env=cpu_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while logged_step(workdir) < until_step:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  return proc


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, tfds_dir):
  """An uninterrupted 24-step run on 2 devices (pmap), checkpoints every 4 steps."""
  workdir = str(tmp_path_factory.mktemp('ref') / 'run')
  proc = subprocess.run(_train_cmd(workdir, 24, f'--config.data.tfds_dir={tfds_dir}',
                                   '--config.checkpoint_every_steps=4'),
                        cwd=ROOT, env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.mark.faults
@pytest.mark.parametrize('trial', range(4))
def test_sigkill_at_a_random_step_then_rerun_is_bit_identical(trial, tmp_path, tfds_dir,
                                                             reference_run):
  kill_after = int(np.random.default_rng([2026, trial]).integers(2, 22))
  workdir = str(tmp_path / 'run')
  proc = _start_and_wait(workdir, 24, kill_after, tfds_dir, '--config.checkpoint_every_steps=4')
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  rerun = subprocess.run(_train_cmd(workdir, 24, f'--config.data.tfds_dir={tfds_dir}',
                                    '--config.checkpoint_every_steps=4'),
                         cwd=ROOT, env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  # Parameters, optimizer state, step and key, bit for bit; and the same final test metrics.
  assert_trees_equal(_state(reference_run), _state(workdir))
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['test'] == json.load(open(os.path.join(reference_run, 'results.json')))['test']
  assert results['resumed_from_step'] is not None


@pytest.mark.faults
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_preemption_saves_the_current_step_and_resumes(sig, tmp_path, tfds_dir, reference_run):
  workdir = str(tmp_path / 'run')
  # No periodic checkpoint before the end: the preemption checkpoint is the only one.
  proc = _start_and_wait(workdir, 24, 5, tfds_dir, '--config.checkpoint_every_steps=1000')
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 75, stderr[-3000:]
  line = [l for l in stderr.splitlines() if l.startswith('stopped: ')]
  assert len(line) == 1 and f'{signal.Signals(sig).name} at step ' in line[0]
  stopped_at = int(line[0].split(' at step ')[1].split()[0])
  assert 5 <= stopped_at < 24 and 're-run the same command to resume' in line[0]
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'))
  assert ckpt.all_steps() == [stopped_at]
  ckpt.close()
  rerun = subprocess.run(_train_cmd(workdir, 24, f'--config.data.tfds_dir={tfds_dir}',
                                    '--config.checkpoint_every_steps=1000'),
                         cwd=ROOT, env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert_trees_equal(_state(reference_run), _state(workdir))


# ----------------------------------------------------------------------------- failed writes


def _faulty_cmd(spec, workdir, tfds_dir):
  """reference_run's command, run by test_write_faults.py with its Faults(**spec) installed."""
  cmd = _train_cmd(workdir, 24, f'--config.data.tfds_dir={tfds_dir}',
                   '--config.checkpoint_every_steps=4')
  return [sys.executable, os.path.join(ROOT, 'tests', 'test_write_faults.py'), json.dumps(spec),
          *cmd[1:]]


def _rerun(workdir, tfds_dir):
  """The same command again, without faults; its results.json."""
  rerun = subprocess.run(_train_cmd(workdir, 24, f'--config.data.tfds_dir={tfds_dir}',
                                    '--config.checkpoint_every_steps=4'),
                         cwd=ROOT, env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'Traceback' not in rerun.stderr, rerun.stderr[-3000:]  # Nor 'Event loop is closed'.
  assert not leftovers(workdir), leftovers(workdir)
  return json.load(open(os.path.join(workdir, 'results.json')))


def _each_step_once(workdir, last=24):
  """metrics.jsonl holds every step's train line once, and no record twice."""
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  keyed = [(r['step'], tuple(sorted(r))) for r in records]
  assert len(keyed) == len(set(keyed)), keyed
  train_steps = [r['step'] for r in records if 'train/learning_rate' in r]
  assert train_steps == list(range(1, last + 1)), train_steps


# (Faults, the file the error names, the step a re-run resumes from: None = starts again.)
FAILED_WRITES = {
    'metrics-full': ({'name': 'metrics.jsonl', 'nth': 10, 'code': 'ENOSPC'}, 'metrics.jsonl', 8),
    'metrics-denied': ({'name': 'metrics.jsonl', 'call': 'open', 'code': 'EACCES'},
                       'metrics.jsonl', None),
    'events-full': ({'name': 'events.out.tfevents', 'nth': 40, 'code': 'ENOSPC'},
                    'tensorboard/events.out.tfevents.', 4),
    'config-readonly': ({'name': 'config.json', 'call': 'open', 'code': 'EROFS'}, 'config.json',
                        None),
    'picture-denied': ({'name': 'reconstructions.png', 'call': 'open', 'code': 'EACCES'},
                       'reconstructions.png', 24),
    'picture-vanished': ({'name': 'samples.png', 'call': 'open', 'code': 'ENOENT'},
                         'samples.png', 24),
    'results-full': ({'name': 'results.json', 'code': 'ENOSPC'}, 'results.json', 24),
    'checkpoint-full': ({'name': f'8{TMP_SUFFIX}', 'call': 'rename', 'code': 'ENOSPC'},
                        'checkpoints/8', 4),
    'checkpoint-denied': ({'name': f'12{TMP_SUFFIX}', 'call': 'rename', 'code': 'EACCES'},
                          'checkpoints/12', 8),
}


@pytest.mark.faults
@pytest.mark.parametrize('case', list(FAILED_WRITES))
def test_a_failed_write_is_one_line_and_the_rerun_resumes(case, tmp_path, tfds_dir,
                                                          reference_run):
  spec, written, resumes = FAILED_WRITES[case]
  workdir = str(tmp_path / 'run')
  proc = subprocess.run(_faulty_cmd(spec, workdir, tfds_dir), cwd=ROOT, env=cpu_env(2),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  # One line: no traceback, no orbax error log (E1206 12:00:00 ...), the error last.
  assert 'Traceback' not in proc.stderr and not re.search(r'(^|\n)E\d{4} ', proc.stderr)
  lines = [l for l in proc.stderr.splitlines() if 'error' in l.lower()]
  assert len(lines) == 1 and proc.stderr.rstrip().endswith(lines[0]), proc.stderr[-3000:]
  then = f'resume from step {resumes}' if resumes is not None else 'start again'
  assert lines[0].startswith(f'error: cannot write {os.path.join(workdir, written)}')
  assert f'({spec["code"]}); ' in lines[0] and lines[0].endswith(f'the same command to {then}')
  assert not leftovers(workdir), leftovers(workdir)
  results = _rerun(workdir, tfds_dir)
  assert results['resumed_from_step'] == resumes
  assert results['test'] == json.load(open(os.path.join(reference_run, 'results.json')))['test']
  _each_step_once(workdir)


@pytest.mark.faults
@pytest.mark.parametrize('spec,resumes', [
    ({'name': f'8{TMP_SUFFIX}', 'call': 'rename', 'kill': 'before'}, 4),  # 8 still temporary.
    ({'name': f'8{TMP_SUFFIX}', 'call': 'rename', 'kill': 'after'}, 8),  # 8 whole, no line 9.
    # Step 10's line cut halfway; step 8's asynchronous save may still be unfinished.
    ({'name': 'metrics.jsonl', 'nth': 10, 'kill': True}, None),
], ids=['before-rename', 'after-rename', 'mid-metrics-line'])
def test_sigkill_inside_a_checkpoint_save_then_rerun_is_identical(spec, resumes, tmp_path,
                                                                 tfds_dir, reference_run):
  workdir = str(tmp_path / 'run')
  proc = subprocess.run(_faulty_cmd(spec, workdir, tfds_dir), cwd=ROOT, env=cpu_env(2),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  whole = checkpoints.steps_in(os.path.join(workdir, 'checkpoints'))
  assert whole and (resumes is None or whole[-1] == resumes), whole
  if spec['name'] == 'metrics.jsonl':
    assert not open(os.path.join(workdir, 'metrics.jsonl')).read().endswith('\n')
  results = _rerun(workdir, tfds_dir)
  assert results['resumed_from_step'] == whole[-1]
  assert_trees_equal(_state(reference_run), _state(workdir))
  assert results['test'] == json.load(open(os.path.join(reference_run, 'results.json')))['test']
  _each_step_once(workdir)


# ----------------------------------------------------------------------------- device counts


# pmap draws a sampling model's noise per device, so its VAE on another device count draws other
# noise by design: the deterministic AE shows pmap's continuation; sharded jit draws the same noise
# on any device count, so the VAE shows jit's.
CONTINUATION_CONFIG = {'pmap': 'configs/ae_fashion_mnist.py', 'jit': 'configs/default.py'}


def _strategy_cmd(workdir, parallel, tfds_dir):
  cmd = _train_cmd(workdir, 8, f'--config.data.tfds_dir={tfds_dir}', f'--config.parallel={parallel}',
                   '--config.checkpoint_every_steps=4')
  return [a if not a.startswith('--config=') else f'--config={CONTINUATION_CONFIG[parallel]}'
          for a in cmd]


@pytest.fixture(scope='module')
def four_device_runs(tmp_path_factory, tfds_dir):
  """{parallel: workdir} of uninterrupted 8-step runs on 4 devices (checkpoints at 4 and 8)."""
  runs = {}
  for parallel in ('pmap', 'jit'):
    workdir = str(tmp_path_factory.mktemp(f'four_{parallel}') / 'run')
    proc = subprocess.run(_strategy_cmd(workdir, parallel, tfds_dir), cwd=ROOT, env=cpu_env(4),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs[parallel] = workdir
  return runs


# Gradients summed over 4 devices and over 1 or 2 are added in another order: 4 more Adam steps
# then differ by rounding (measured below 1e-6), never by data.
CONTINUATION_ATOL = 1e-5


@pytest.mark.faults
@pytest.mark.parametrize('devices,parallel', [(1, 'pmap'), (2, 'pmap'), (1, 'jit'), (2, 'jit')])
def test_checkpoint_of_4_devices_continues_on_fewer(devices, parallel, tmp_path, tfds_dir,
                                                    four_device_runs):
  """The step-4 checkpoint of a 4-device run, continued on 1 or 2 devices to step 8, ends where
  the uninterrupted 4-device run ended."""
  reference = four_device_runs[parallel]
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns('results.json'))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '8'))  # Stopped after step 4's checkpoint.
  rerun = subprocess.run(_strategy_cmd(workdir, parallel, tfds_dir), cwd=ROOT, env=cpu_env(devices),
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert (results['resumed_from_step'], results['step'], results['num_devices']) == (4, 8, devices)
  continued, uninterrupted = saved_state(workdir, 8), saved_state(reference, 8)
  assert int(continued['train_state']['step']) == 8
  assert_trees_equal(continued, uninterrupted, atol=CONTINUATION_ATOL)
  # And the 4 steps moved the parameters much more than the tolerance.
  start = saved_state(reference, 4)['train_state']['params']
  moved = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(start), jax.tree.leaves(uninterrupted['train_state']['params'])))
  assert moved > 100 * CONTINUATION_ATOL


# ----------------------------------------------------------------------------- multi-process


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# Float sums over 4 devices are reduced in another order across processes (gloo) than within
# one: parameters after 6 Adam steps may differ by rounding, not by data.
MULTIHOST_ATOL = 1e-5


def _two_processes(command):
  """Popens of command(*flags) as processes 0 and 1 of a run on 127.0.0.1 (2 CPU devices each);
  `command` gives the train.py command line with the multi-process flags appended."""
  port = _free_port()
  # Two processes compiling the same programs at once: without the session's compilation cache,
  # whose entries are not written atomically. PYTHONFAULTHANDLER: a process that hangs prints
  # every thread's stack on the SIGABRT _finished sends it.
  env = {k: v for k, v in cpu_env(2).items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['PYTHONFAULTHANDLER'] = '1'
  return [subprocess.Popen(
      command(f'--coordinator_address=127.0.0.1:{port}',
              f'--coordinator_bind_address=127.0.0.1:{port}', '--num_processes=2',
              f'--process_id={i}'),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _finished(procs, timeout=600):
  """[(stdout, stderr)] of processes that must all end with status 0 within `timeout` seconds.
  A run that hangs fails with the end of every process's stderr and, for each process still
  running, its Python stacks (SIGABRT under PYTHONFAULTHANDLER)."""
  deadline = time.monotonic() + timeout
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
  except subprocess.TimeoutExpired:
    hung = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in hung:
      procs[i].send_signal(signal.SIGABRT)
    outputs += [p.communicate(timeout=120) for p in procs[len(outputs):]]
    pytest.fail(f'processes {hung} still running after {timeout} s:\n' + '\n'.join(
        f'--- process {i} stderr (end) ---\n{err[-6000:]}' for i, (_, err) in enumerate(outputs)))
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs


@pytest.mark.faults
@pytest.mark.parametrize('parallel', ['pmap', 'jit'])
def test_two_processes_match_one_process_with_four_devices(parallel, tmp_path, tfds_dir):
  common = [f'--config.data.tfds_dir={tfds_dir}', f'--config.parallel={parallel}',
            '--config.checkpoint_every_steps=3']
  single = str(tmp_path / 'single')
  proc = subprocess.run(_train_cmd(single, 6, *common), cwd=ROOT, env=cpu_env(4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  multi = str(tmp_path / 'multi')
  outputs = _finished(_two_processes(lambda *flags: _train_cmd(multi, 6, *common, *flags)))
  assert 'Process 1 of 2 (2 local devices of 4 in all)' in outputs[1][1]
  results = json.load(open(os.path.join(multi, 'results.json')))
  assert (results['num_processes'], results['num_devices'], results['step']) == (2, 4, 6)
  # Only process 0 writes logs: the lines of the one-process run, each once; one event file.
  def logged_steps(workdir):
    return [json.loads(l)['step'] for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert logged_steps(multi) == logged_steps(single) and len(logged_steps(single)) >= 5
  assert len(os.listdir(os.path.join(multi, 'tensorboard'))) == 1
  a, b = _state(single), _state(multi)
  assert_trees_equal(a['params'], b['params'], atol=MULTIHOST_ATOL)
  # The 2-process checkpoint restores in one process, which continues it.
  proc = subprocess.run(_train_cmd(multi, 8, *common), cwd=ROOT, env=cpu_env(1),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(os.path.join(multi, 'results.json')))['resumed_from_step'] == 6


@pytest.mark.faults
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_one_process_of_two_stops_both_at_one_step_with_a_checkpoint(
    sig, tmp_path, tfds_dir):
  """Through the coordination service's preemption sync point, not a per-step collective: the
  signalled process and the other one stop after the same step, with one checkpoint there, and
  the run resumes from it."""
  workdir = str(tmp_path / 'run')
  common = [f'--config.data.tfds_dir={tfds_dir}', '--config.checkpoint_every_steps=1000']
  procs = _two_processes(lambda *flags: _train_cmd(workdir, 400, *common, *flags))
  deadline = time.time() + 300
  while logged_step(workdir) < 5:
    assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  procs[1].send_signal(sig)
  outputs = [p.communicate(timeout=300)[1] for p in procs]
  stopped = []
  for p, err in zip(procs, outputs):
    assert p.returncode == 75, err[-3000:]
    line = [l for l in err.splitlines() if l.startswith('stopped: ')]
    assert len(line) == 1, err[-3000:]
    stopped.append(int(line[0].split(' at step ')[1].split()[0]))
  assert stopped[0] == stopped[1] and 5 <= stopped[0] < 400
  assert f'{signal.Signals(sig).name} at step' in outputs[1]
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'))
  assert ckpt.all_steps() == [stopped[0]]
  ckpt.close()
  done = subprocess.run(_train_cmd(workdir, stopped[0] + 2, *common), cwd=ROOT, env=cpu_env(4),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.load(open(os.path.join(workdir, 'results.json')))['resumed_from_step'] == stopped[0]


def _slurm_port_and_job_id():
  """A free port in JAX's Slurm range and a SLURM_JOB_ID that maps to it (port = 61440 +
  job id % 4096, jax._src.clusters.slurm_cluster)."""
  for port in np.random.default_rng().permutation(np.arange(61440, 65536))[:200]:
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', int(port)))
      except OSError:
        continue
    return int(port), 4096 * 7 + int(port) - 61440
  pytest.skip('no free port in 61440-65535')


@pytest.mark.faults
def test_slurm_launch_through_distributed_alone_matches_one_process(tmp_path, tfds_dir):
  """Two processes started as `srun --ntasks=2` on one node would start them (one task per
  device: SLURM_PROCID / SLURM_LOCALID 0 and 1), given --distributed and nothing else: JAX's
  Slurm detection joins them, and they train as one process on 4 devices does."""
  common = [f'--config.data.tfds_dir={tfds_dir}', '--config.checkpoint_every_steps=3']
  single = str(tmp_path / 'single')
  proc = subprocess.run(_train_cmd(single, 6, *common), cwd=ROOT, env=cpu_env(4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  port, job_id = _slurm_port_and_job_id()
  multi = str(tmp_path / 'multi')
  base = {k: v for k, v in cpu_env(2).items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  slurm = {'SLURM_JOB_ID': str(job_id), 'SLURM_STEP_NODELIST': '127.0.0.1', 'SLURM_NTASKS': '2',
           'SLURM_STEP_NUM_NODES': '1', 'SLURM_NNODES': '1'}
  procs = [subprocess.Popen(
      _train_cmd(multi, 6, *common, '--distributed'), cwd=ROOT,
      env={**base, **slurm, 'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i)},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert 'Process 1 of 2 (2 local devices of 4 in all)' in outputs[1][1]
  results = json.load(open(os.path.join(multi, 'results.json')))
  assert (results['num_processes'], results['num_devices'], results['step']) == (2, 4, 6)
  assert_trees_equal(_state(single)['params'], _state(multi)['params'], atol=MULTIHOST_ATOL)


def _write_segmentation_folder(root, n=32, size=16, classes=3):
  """n random grayscale size x size PNG images and their label masks, same stems."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for kind in ('images', 'masks'):
    os.makedirs(os.path.join(root, kind), exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
        os.path.join(root, 'images', f'x{i:02d}.png'))
    Image.fromarray(rng.integers(0, classes, (size, size)).astype(np.uint8)).save(
        os.path.join(root, 'masks', f'x{i:02d}.png'))
  return os.path.join(root, 'images'), os.path.join(root, 'masks')


def _folder_cmd(workdir, tfds_dir, images, masks, *extra):
  return [sys.executable, os.path.join(ROOT, 'train.py'), '--config=configs/folder.py',
          f'--workdir={workdir}', f'--config.data.images_dir={images}',
          f'--config.data.masks_dir={masks}', '--config.data.num_classes=3',
          '--config.data.channels=1', '--config.data.image_size=(16, 16)',
          '--config.model.features=(4, 8)', '--config.batch_size=8', '--config.eval_batch_size=8',
          '--config.num_train_steps=4', '--config.eval_every_steps=4',
          '--config.checkpoint_every_steps=4', '--config.log_every_steps=1',
          '--config.num_pictures=2', '--config.warmup_steps=1', '--config.data.augment.flip=False',
          '--config.data.augment.crop_min_scale=1.0', f'--config.data.tfds_dir={tfds_dir}',
          *extra]


@pytest.mark.faults
def test_two_processes_on_an_empty_shared_tfds_dir_prepare_the_dataset_once(tmp_path):
  """Process 0 prepares the folder dataset while process 1 waits, then both read it: one
  preparation, the dataset folder whole and no incomplete.* folder, and the training of one
  process on 4 devices (its own tfds_dir).

  Every step also saves both checkpoint folders at once (checkpoints/ and, for config.best_metric,
  checkpoints_best/): orbax's multi-process barriers are named by step, and before each manager
  had its own barrier prefix about 2 runs in 5 of this hung ("barrier ... already ongoing")."""
  images, masks = _write_segmentation_folder(str(tmp_path / 'data'))
  every_step = ('--config.eval_every_steps=1', '--config.checkpoint_every_steps=1',
                '--config.best_metric=miou')
  single = str(tmp_path / 'single')
  proc = subprocess.run(_folder_cmd(single, tmp_path / 'tfds_single', images, masks, *every_step),
                        cwd=ROOT, env=cpu_env(4), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  shared, multi = tmp_path / 'shared_tfds', str(tmp_path / 'multi')
  outputs = _finished(_two_processes(
      lambda *flags: _folder_cmd(multi, shared, images, masks, *every_step, *flags)))
  prepared = [out + err for out, err in outputs]
  assert [text.count('prepared to') for text in prepared] == [1, 0], prepared[1][-2000:]
  found = [os.path.relpath(os.path.join(r, d), shared) for r, dirs, _ in os.walk(shared)
           for d in dirs]
  assert not [d for d in found if 'incomplete.' in os.path.basename(d)], found
  assert [d for d in found if d.count(os.sep) == 2]  # segmentation_folder/<config>/<version>
  def losses(workdir):
    return [r['train/loss'] for r in map(json.loads, open(os.path.join(workdir, 'metrics.jsonl')))
            if 'train/loss' in r]
  assert len(losses(single)) >= 3
  np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-5)
