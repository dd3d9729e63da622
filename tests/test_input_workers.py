"""The input pipeline with grain worker processes: the batches of any worker count are the
batches of none, a dying worker stops the run with one line, and a killed training process leaves
no worker behind. Worker processes take seconds to start, so these run in `make test-faults`."""
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import ROOT, assert_trees_equal, scenes_config, small_config
from segae_jax import data, training
from segae_jax.data import augment, views
from test_data import png_source_with_a_cut_file
from test_views import CONFIG, _dataset
from conftest import cpu_env
from test_faults import _start_and_wait, _state, _tiny_overrides, _train_cmd, reference_run

pytestmark = pytest.mark.faults
__all__ = ['reference_run']  # A fixture, used by name below.


def _batches(it, n):
  try:
    return [next(it) for _ in range(n)]
  finally:
    it.close()


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batches_are_the_same_for_0_and_2_workers_and_after_a_resume(tfds_dir):
  """Augmented scenes (crop, flip, brightness/contrast) over two epochs; then a resume at batch
  5 of a 2-worker iterator gives the 0-worker batches from there."""
  config = scenes_config(tfds_dir)
  dataset = data.build(config.data)
  preprocess = augment.with_augmentation(dataset.preprocess, {
      'flip': True, 'crop_min_scale': 0.5, 'brightness': 0.1, 'contrast': 0.1})
  make = functools.partial(data.TrainIterator, dataset.train, 16, 0, preprocess)
  assert make().batches_per_epoch == 4
  plain = _batches(make(num_workers=0), 9)
  _assert_same(_batches(make(num_workers=2), 9), plain)
  resumed = make(num_workers=2)
  resumed.set_state({'format': data.pipeline.STATE_FORMAT, 'epoch': 1, 'batch': 1, 'seed': 0,
                     'global_batch_size': 16})
  _assert_same(_batches(resumed, 4), plain[5:])


def test_two_strong_views_of_a_part_are_the_same_for_0_and_2_workers():
  """Each view draws from its example's own generator, in the order listed, wherever the batch
  is made."""
  by_part = {'unlabeled': [views.StrongView(outkey='strong_1'), views.StrongView(outkey='strong_2'),
                           views.CutMixBox(prob=1.0)]}
  make = lambda workers: data.train_inputs(
      dict(CONFIG, data=dict(CONFIG['data'], num_workers=workers)), _dataset(), by_part, None)
  plain, workers = _batches(make(0), 3), _batches(make(2), 3)
  assert sorted(plain[0]['unlabeled']) == ['cutmix', 'image', 'strong_1', 'strong_2']
  for a, b in zip(plain, workers):
    assert_trees_equal(a, b)


def test_a_file_that_cannot_be_decoded_in_a_worker_is_named():
  it = data.TrainIterator(png_source_with_a_cut_file(), 4, seed=0,
                          preprocess=functools.partial(data.scale_images, binarize=False),
                          num_workers=2)
  with pytest.raises(data.DataError, match=r'^cannot read example 5: \w+Error: [^\n]*$'):
    _batches(it, 2)


def test_a_killed_worker_stops_the_iterator_with_one_line(fashion_mnist):
  it = data.TrainIterator(fashion_mnist.train, 64, 0, fashion_mnist.preprocess, num_workers=2)
  next(it)
  workers = [p for p in multiprocessing.active_children() if p.pid and p.is_alive()]
  assert workers
  for w in workers:
    os.kill(w.pid, signal.SIGKILL)
  start = time.time()
  with pytest.raises(data.pipeline.InputWorkerDied,
                     match=r'^an input worker process died .* while making training batch \d+ '
                           r'\(epoch 0: 64 examples, the first example \d+\); re-run'):
    _batches(it, 50)  # A few are already made; then the dead worker's turn comes.
  assert time.time() - start < 60  # Noticed, not waited on forever.


def test_a_streamed_split_with_workers_trains_to_the_held_split_metrics(tmp_path, tfds_dir):
  """The same run with the splits in memory and no workers, and streamed from the array_record
  files through 2 workers: the same test metrics, bit for bit."""
  results = {}
  for name, cache, workers in (('held', 'memory', 0), ('streamed', 'stream', 2)):
    config = small_config(tfds_dir, **_tiny_overrides(
        **{'data.cache': cache, 'data.num_workers': workers, 'data.binarize': True}),
        num_train_steps=6, eval_every_steps=6, batch_size=32, eval_batch_size=2000)
    results[name] = training.train_and_evaluate(config, str(tmp_path / name))
  assert results['held']['test'] == results['streamed']['test']


def _children(pid):
  """The child processes of `pid`, started by any of its threads."""
  children = []
  for task in os.listdir(f'/proc/{pid}/task'):
    try:
      with open(f'/proc/{pid}/task/{task}/children') as f:
        children += [int(c) for c in f.read().split()]
    except OSError:
      pass
  return children


def _alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(') ')[1][0] != 'Z'
  except OSError:
    return False


@pytest.mark.skipif(not os.path.exists(f'/proc/{os.getpid()}/task/{os.getpid()}/children'),
                    reason='needs Linux /proc children lists')
def test_sigkill_with_workers_then_rerun_is_bit_identical(tmp_path, tfds_dir, reference_run):
  """The reference run had no workers; this one has 2, is killed (its workers must die with it),
  and re-runs with 2: parameters, optimizer state and test metrics as the reference's."""
  workdir = str(tmp_path / 'run')
  extra = ('--config.checkpoint_every_steps=4', '--config.data.num_workers=2')
  proc = _start_and_wait(workdir, 24, 9, tfds_dir, *extra)
  workers = _children(proc.pid)
  assert workers  # The grain workers (and multiprocessing's resource tracker).
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)  # Not communicate(): a surviving worker would hold the pipes open.
  deadline = time.time() + 30
  while any(_alive(w) for w in workers) and time.time() < deadline:
    time.sleep(0.1)
  survivors = [w for w in workers if _alive(w)]
  for w in survivors:
    os.kill(w, signal.SIGKILL)
  proc.stdout.close(), proc.stderr.close()
  assert not survivors, 'input workers outlived the killed training process'

  rerun = subprocess.run(_train_cmd(workdir, 24, f'--config.data.tfds_dir={tfds_dir}', *extra),
                         cwd=ROOT, env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert_trees_equal(_state(reference_run), _state(workdir))
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['test'] == json.load(open(os.path.join(reference_run, 'results.json')))['test']
