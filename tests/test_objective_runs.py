"""Real trainings of the objective configs (`make test-faults`, which CI runs): the teacher's
scenes config and its resume, a pool that weighs nothing, the other scenes configs, pretrain ->
fine-tune with init_from, the folder configs on images written here and a SIGKILLed teacher
run."""
import json
import os
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest

from conftest import ROOT, assert_trees_equal, saved_state, scenes_config, set_fields
from segae_jax import training
from segae_jax.errors import UserInputError
from segae_jax.training import checkpoints, pretrained

# Tiny real scenes (tests/conftest.py) with a pool: a quarter of the 64 training scenes keep their
# masks (16), the others are the pool; 8 of every 16 come from it (an even share per device).
POOL = {'labeled_fraction': 0.25, 'data.unlabeled_per_batch': 8, 'batch_size': 16,
        'objective_params.rampup_fraction': 0.5, 'objective_params.patch_size': 8}


def _pool_config(tfds_dir, config_file, **overrides):
  config = scenes_config(tfds_dir, config_file)
  fields = {k: v for k, v in POOL.items() if not k.startswith('objective_params.')
            or k.split('.', 1)[1] in config.objective_params}
  return set_fields(config, {**fields, **overrides})


def _resume_copy(workdir, copy, step):
  """A copy of a finished run as if killed after checkpoint `step` (later checkpoints gone)."""
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('results.json'))
  for directory in ('checkpoints', 'checkpoints_best'):
    for saved in checkpoints.steps_in(os.path.join(copy, directory)):
      if saved > step:
        shutil.rmtree(os.path.join(copy, directory, str(saved)))


@pytest.mark.faults  # About 11 s; the default suite checks the teacher's step and state.
def test_fixmatch_scenes_trains_and_its_teacher_resumes_bit_for_bit(tmp_path, tfds_dir):
  config = _pool_config(tfds_dir, 'fixmatch_scenes')
  workdir = str(tmp_path / 'run')
  results = training.train_and_evaluate(config, workdir)
  assert 0.0 <= results['test']['miou'] <= 1.0
  lines = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  train = [line for line in lines if 'train/confident_fraction' in line]
  assert len(train) == 2 and all(0 <= l['train/confident_fraction'] <= 1 for l in train)
  assert train[-1]['train/unlabeled_weight'] == pytest.approx(1.0)  # Ramped up by step 4.
  saved = saved_state(workdir, 4)
  teacher = saved['train_state']['objective_state']['teacher']
  assert set(teacher) == {'params', 'batch_stats'}
  assert not np.array_equal(jax.tree.leaves(teacher['params'])[0],
                            jax.tree.leaves(saved['train_state']['params'])[0])
  # The tools (evaluate, predict, ...) restore the variables the run evaluated with: the teacher.
  from segae_jax.tools import common
  restored = common.load_run(workdir, 'latest')
  assert_trees_equal(restored.variables['params'], teacher['params'])
  assert_trees_equal(restored.variables['batch_stats'], teacher['batch_stats'])
  copy = str(tmp_path / 'resumed')
  _resume_copy(workdir, copy, 2)
  resumed = training.train_and_evaluate(_pool_config(tfds_dir, 'fixmatch_scenes'), copy)
  assert (resumed['resumed_from_step'], resumed['step']) == (2, 4)
  assert_trees_equal(saved_state(copy, 4), saved)   # Student, teacher, optimizer, key.
  assert resumed['test'] == results['test']


@pytest.mark.faults
@pytest.mark.parametrize('config_file', ['masked_rec_scenes', 'denoising_scenes'])
def test_reconstruction_objective_configs_train_on_scenes(tmp_path, tfds_dir, config_file):
  results = training.train_and_evaluate(_pool_config(tfds_dir, config_file), str(tmp_path))
  assert 0.0 <= results['test']['miou'] <= 1.0 and np.isfinite(results['test']['loss'])
  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  term = 'train/rec_mse_per_pixel' if config_file.startswith('masked') else 'train/noise_mse'
  assert any(term in line for line in lines)


@pytest.mark.faults  # Two trainings, about 13 s.
def test_a_pool_whose_terms_weigh_nothing_changes_nothing(tmp_path, tfds_dir):
  """The SegAE with alpha = 0 on the 16 labelled scenes, once alone (batch 8) and once with 8
  pool scenes in every batch: the same parameters, BatchNorm statistics and test metrics, bit
  for bit (each pass normalises its own part; the pool's statistics never reach the state)."""
  loss = {'loss.rec_mse_per_pixel': 0.0, 'loss.seg_ce': 1.0}
  alone = scenes_config(tfds_dir, 'segae_scenes', labeled_fraction=0.25, labeled_only=True,
                        **loss)
  pooled = scenes_config(tfds_dir, 'segae_scenes', labeled_fraction=0.25, batch_size=16,
                         **{'data.unlabeled_per_batch': 8, **loss})
  first = training.train_and_evaluate(alone, str(tmp_path / 'alone'))
  second = training.train_and_evaluate(pooled, str(tmp_path / 'pooled'))
  assert_trees_equal(saved_state(str(tmp_path / 'alone'), 4)['train_state'],
                     saved_state(str(tmp_path / 'pooled'), 4)['train_state'])
  assert first['test'] == second['test']


@pytest.mark.faults
def test_pretraining_then_fine_tuning_loads_exactly_the_matching_parameters(tmp_path, tfds_dir):
  pretrain_dir, finetune_dir = str(tmp_path / 'pretrain'), str(tmp_path / 'finetune')
  training.train_and_evaluate(scenes_config(tfds_dir, 'pretrain_scenes'), pretrain_dir)
  source = saved_state(pretrain_dir, 4)['train_state']
  config = scenes_config(tfds_dir, 'finetune_scenes', labeled_fraction=0.25,
                         init_from=pretrain_dir, init_dont_load=('encoder/level0/.*',),
                         num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
  fresh = training.create_train_state(config, training.build_model(config, (32, 32, 1), 11),
                                      (32, 32, 1), training.run_keys(0)[0])
  loaded = pretrained.init_from(config, fresh)
  for name in ('params', 'batch_stats'):
    start, init = (_flat(getattr(s, name)) for s in (loaded, fresh))
    saved = _flat(source[name])
    assert start.keys() == init.keys()
    from_source = [p for p in start if p.startswith('encoder/level1/')]
    assert from_source
    for path, value in start.items():
      # encoder/level1 from the pretraining; encoder/level0 (init_dont_load) and the decoder,
      # which unet_ae has not, as initialised.
      expected = saved[path] if path in from_source else init[path]
      np.testing.assert_array_equal(value, expected, err_msg=path)
  # The optimizer starts afresh (Adam's moments of the loaded parameters are zero).
  assert all(not np.any(m) for m in jax.tree.leaves(loaded.opt_state) if np.ndim(m) > 0)
  results = training.train_and_evaluate(config, finetune_dir)
  assert results['step'] == 2 and 0 <= results['test']['miou'] <= 1
  # Resumed, the run restores its own checkpoint and never reads the pretraining run again.
  shutil.rmtree(pretrain_dir)
  resumed = training.train_and_evaluate(set_fields(config, {'num_train_steps': 3}), finetune_dir)
  assert resumed['resumed_from_step'] == 2
  # Another width: the shapes differ, one line naming the parameter.
  wider = set_fields(config, {'model.features': (8, 32), 'init_from': finetune_dir,
                              'init_dont_load': ()})
  other = training.create_train_state(wider, training.build_model(wider, (32, 32, 1), 11),
                                      (32, 32, 1), training.run_keys(0)[0])
  with pytest.raises(UserInputError, match=r'parameter decoder/up0/deconv/kernel has shape '
                                           r'\(2, 2, 16, 8\) there and \(2, 2, 32, 8\) here'):
    pretrained.init_from(wider, other)


def _flat(tree):
  import flax.traverse_util
  return {k: np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(jax.device_get(dict(tree)), sep='/').items()}


# ---------------------------------------------------------------------------------------------
# The folder configs, on images written here (make test-faults: five trainings).

def _write_folders(root):
  """16 labelled 20x24 RGB images with 3-class masks, 16 unlabelled ones, as a user has them."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for sub in ('images', 'masks', 'unlabeled'):
    os.makedirs(root / sub)
  for i in range(16):
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / 'images' / f'{i:02d}.png')
    Image.fromarray((image[..., 0] // 86).astype(np.uint8)).save(root / 'masks' / f'{i:02d}.png')
  for i in range(16):
    Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(
        root / 'unlabeled' / f'u{i}.png')


SMALL_FOLDER = {'data.image_size': (16, 16), 'data.num_classes': 3, 'data.test_fraction': 0.25,
                'model.features': (8, 16), 'batch_size': 8, 'num_train_steps': 2,
                'warmup_steps': 1, 'eval_every_steps': 2, 'checkpoint_every_steps': 2,
                'log_every_steps': 1, 'eval_batch_size': 4, 'num_pictures': 2}


@pytest.mark.faults
def test_folder_objective_configs_train_on_images_written_here(tmp_path):
  import importlib
  _write_folders(tmp_path)
  folders = {'data.images_dir': str(tmp_path / 'images'), 'data.masks_dir': str(tmp_path / 'masks'),
             'data.unlabeled_dir': str(tmp_path / 'unlabeled'), 'data.unlabeled_per_batch': 8,
             'data.tfds_dir': str(tmp_path / 'tfds')}
  for name in ('folder_semisup', 'fixmatch_folder', 'masked_rec_folder', 'denoising_folder'):
    config = importlib.import_module(f'configs.{name}').get_config()
    overrides = {**SMALL_FOLDER, **folders, 'batch_size': 16}
    if name == 'masked_rec_folder':
      overrides['objective_params.patch_size'] = 4
    results = training.train_and_evaluate(set_fields(config, overrides), str(tmp_path / name))
    assert results['step'] == 2 and 0 <= results['test']['miou'] <= 1, name
  # Pretraining on the unlabelled folder alone, then a U-Net fine-tuned from its encoder.
  pretrain = importlib.import_module('configs.pretrain_folder').get_config()
  set_fields(pretrain, {**{k: v for k, v in SMALL_FOLDER.items() if k != 'data.num_classes'},
                        'data.images_dir': str(tmp_path / 'unlabeled'), 'data.channels': 3,
                        'data.tfds_dir': str(tmp_path / 'tfds')})
  training.train_and_evaluate(pretrain, str(tmp_path / 'pretrain'))
  finetune = importlib.import_module('configs.finetune_folder').get_config()
  set_fields(finetune, {**SMALL_FOLDER, 'data.images_dir': folders['data.images_dir'],
                        'data.masks_dir': folders['data.masks_dir'],
                        'data.tfds_dir': folders['data.tfds_dir'],
                        'init_from': str(tmp_path / 'pretrain')})
  results = training.train_and_evaluate(finetune, str(tmp_path / 'finetune'))
  assert results['step'] == 2
  kernel = lambda workdir, step: saved_state(str(tmp_path / workdir), step)['train_state'][
      'params']['encoder']['level1']['block0']['conv']['kernel']
  # One Adam step from the pretrained encoder (lr 3e-3 warming up): close to it, not to a fresh one.
  assert np.abs(kernel('finetune', 2) - kernel('pretrain', 2)).max() < 0.05


@pytest.mark.faults
@pytest.mark.parametrize('config_file,teacher', [('fixmatch_scenes', True),
                                                 ('unimatch_scenes', False)])
def test_a_pseudo_label_run_killed_at_a_step_resumes_bit_for_bit(tmp_path, tfds_dir, config_file,
                                                                  teacher):
  """train.py with the config (tiny scenes, 2 devices), SIGKILLed after step 5 of 8 and re-run:
  student, EMA teacher (fixmatch), optimizer state and key equal an uninterrupted run's; for
  unimatch, its two strong views and per-example feature dropout are drawn alike on resume."""
  import sys
  import time
  from conftest import cpu_env, logged_step
  flags = [f'--config=configs/{config_file}.py', '--config.data.canvas_size=32',
           '--config.data.num_train=64', '--config.data.num_test=32', '--config.data.max_scale=1.0',
           '--config.model.features=(8,16)', '--config.labeled_fraction=0.25',
           '--config.data.unlabeled_per_batch=8', '--config.batch_size=16',
           '--config.num_train_steps=8', '--config.checkpoint_every_steps=2',
           '--config.eval_every_steps=8', '--config.log_every_steps=1', '--config.num_pictures=2',
           '--config.eval_batch_size=16', f'--config.data.tfds_dir={tfds_dir}']
  command = lambda workdir: [sys.executable, os.path.join(ROOT, 'train.py'), *flags,
                             f'--workdir={workdir}']
  reference, killed = str(tmp_path / 'reference'), str(tmp_path / 'killed')
  done = subprocess.run(command(reference), cwd=ROOT, env=cpu_env(2), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  proc = subprocess.Popen(command(killed), cwd=ROOT, env=cpu_env(2), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while logged_step(killed) < 5:
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  rerun = subprocess.run(command(killed), cwd=ROOT, env=cpu_env(2), capture_output=True,
                         text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  final = saved_state(killed, 8)
  assert ('teacher' in (final['train_state'].get('objective_state') or {})) == teacher
  assert_trees_equal(final, saved_state(reference, 8))
  results = json.load(open(os.path.join(killed, 'results.json')))
  # A save in flight when the process died is not whole: the run resumes from the one before.
  assert results['resumed_from_step'] in (2, 4, 6)
  assert results['test'] == json.load(open(os.path.join(reference, 'results.json')))['test']
