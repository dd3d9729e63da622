"""train.py end to end on the real data, and its one-line errors for bad input."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import SMALL, run_train

@pytest.fixture(scope='module')
def trained_workdir(tiny_vae_run):
  workdir, proc = tiny_vae_run
  assert f'Results in {workdir}' in proc.stdout
  return workdir


def test_smoke_run_clips_the_warmup_with_one_warning(tiny_vae_run):
  _, proc = tiny_vae_run
  warnings = [l for l in proc.stderr.splitlines() if 'warmup_steps' in l]
  assert len(warnings) == 1, proc.stderr[-3000:]
  assert 'config.warmup_steps=100 is longer than the run (num_train_steps=6)' in warnings[0]


def test_cli_writes_every_output(trained_workdir):
  files = set(os.listdir(trained_workdir))
  assert {'config.json', 'metrics.jsonl', 'results.json', 'reconstructions.png', 'samples.png',
          'tensorboard', 'checkpoints'} <= files
  config = json.load(open(os.path.join(trained_workdir, 'config.json')))
  assert config['model']['name'] == 'vae' and config['num_train_steps'] == 6
  records = [json.loads(line) for line in open(os.path.join(trained_workdir, 'metrics.jsonl'))]
  train_records = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in train_records] == [2, 4, 6]
  for r in train_records:
    assert r['train/images_per_s'] > 0 and np.isfinite(r['train/loss'])
    assert 0 < r['train/learning_rate'] <= 2e-3
  # Warmup clipped to the 6 steps: the rate rises linearly to the peak at the last step.
  assert [r['train/learning_rate'] for r in train_records] == pytest.approx([2e-3 / 6 * s for s in (1, 3, 5)])
    assert r['train/loss'] == pytest.approx(r['train/rec_bce'] + r['train/kl'], rel=1e-5)
  test_records = [r for r in records if 'test/neg_elbo' in r]
  assert [r['step'] for r in test_records] == [3, 6]
  results = json.load(open(os.path.join(trained_workdir, 'results.json')))
  assert results['step'] == 6 and results['num_devices'] == jax.device_count()
  # -ELBO of a barely trained VAE on 784 binary pixels: far below log(2) * 784 = 543 nats only
  # after training; here it must be finite, positive and equal to its parts.
  neg_elbo = results['test']['neg_elbo']
  assert 100 < neg_elbo < 600
  assert neg_elbo == pytest.approx(results['test']['rec_bce'] + results['test']['kl'], rel=1e-6)
  assert results['test'] == {k[5:]: v for k, v in test_records[-1].items() if k.startswith('test/')}
  events = os.listdir(os.path.join(trained_workdir, 'tensorboard'))
  assert any(e.startswith('events.out.tfevents') for e in events)
  recon = np.asarray(Image.open(os.path.join(trained_workdir, 'reconstructions.png')))
  assert recon.shape == (2 * 30 + 2, 8 * 30 + 2)  # Inputs row + reconstructions row, 28 px + pad.
  samples = np.asarray(Image.open(os.path.join(trained_workdir, 'samples.png')))
  assert samples.shape == (2 * 30 + 2, 8 * 30 + 2) and samples.std() > 0
  assert sorted(os.listdir(os.path.join(trained_workdir, 'checkpoints'))) == ['3', '6']


def _snapshot(workdir):
  out = {}
  for dirpath, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(dirpath, name)
      out[path] = open(path, 'rb').read()
  return out


def test_workdir_of_another_model_is_refused_untouched(trained_workdir, tfds_dir):
  before = _snapshot(trained_workdir)
  proc = run_train('--config=configs/ae_fashion_mnist.py', f'--workdir={trained_workdir}', *SMALL,
                   tfds_dir=tfds_dir)
  assert proc.returncode == 2
  assert proc.stderr.count('\n') == 1 and 'Traceback' not in proc.stderr
  assert "holds model=" in proc.stderr and "'name': 'vae'" in proc.stderr
  assert "'name': 'ae'" in proc.stderr and 'use another --workdir' in proc.stderr
  assert _snapshot(trained_workdir) == before


@pytest.mark.parametrize('args,message', [
    (['--config.nope=1'], "unknown config key 'config.nope'"),
    (['--config.model.latnt_dim=8'],
     "unknown config key 'config.model.latnt_dim' (from --config.model.latnt_dim=8): the config has no such field; did you mean 'latent_dim'?"),
    (['--config.batch_size=abc'], "flag --config.batch_size=abc: invalid literal for int()"),
    (['--config.batch_size=30'], 'config.batch_size=30 is not divisible by the 4 devices'),
    (['--config.batch_size=0'], 'config.batch_size must be a positive integer, got 0'),
    (['--config.num_train_steps=-5'], 'config.num_train_steps must be a positive integer, got -5'),
    (['--config.learning_rate=0'], 'config.learning_rate must be > 0, got 0.0'),
    (['--config.model.name=unet3d'],
     "unknown model 'unet3d'; known: ae, segae, segnet, sparse_ae, unet, unet_ae, vae, vae_unet"),
    (['--config.optimizer=adagrad'], "unknown optimizer 'adagrad'; known: adam, adamw, sgd"),
    (['--config.data.name=mnist'], "unknown dataset 'mnist'; known: fashion_mnist, fashion_mnist_scenes, oxford_iiit_pet, segmentation_folder"),
    (['--config.loss.rec_bce=0', '--config.loss.kl=0'], 'config.loss: every weight is zero'),
    (['--config.parallel=dp'], "unknown config.parallel 'dp'; known: pmap, jit"),
    (['--config.labeled_fraction=1.5'], 'config.labeled_fraction must be in (0, 1], got 1.5'),
    (['--config.nonfinite=ignore'], "config.nonfinite must be one of stop, skip, got 'ignore'"),
    (['--config.compute_dtype=float64'],
     "config.compute_dtype must be one of float32, bfloat16, float16, got 'float64'"),
    (['--config.conv_impl=fast'], "config.conv_impl='fast'; expected one of auto, xla, matmul_grad"),
    (['--config.data.idx_dir=/nonexistent/fmnist'],
     'Fashion-MNIST data directory /nonexistent/fmnist does not exist; run `make data`'),
])
def test_bad_input_one_line_exit_2(tmp_path, args, message):
  workdir = tmp_path / 'w'
  proc = run_train('--config=configs/default.py', f'--workdir={workdir}', *args,
                   f'--config.data.tfds_dir={tmp_path / "tfds"}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith('error: ') and proc.stderr.count('\n') == 1, proc.stderr
  assert message in proc.stderr
  assert not (tmp_path / 'tfds').exists()  # No dataset half-built.
  assert not workdir.exists() or not os.listdir(workdir)  # Nothing written.


def test_missing_idx_files_in_given_folder(tmp_path):
  (tmp_path / 'idx').mkdir()
  proc = run_train('--config=configs/default.py', f'--workdir={tmp_path / "w"}',
                   f'--config.data.idx_dir={tmp_path / "idx"}',
                   f'--config.data.tfds_dir={tmp_path / "tfds"}')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1
  assert 'Fashion-MNIST files missing in' in proc.stderr and 'make data' in proc.stderr
  assert not (tmp_path / 'tfds' / 'fashion_mnist_idx' / '1.0.0').exists()


@pytest.mark.parametrize('config_arg,message', [
    ('configs/nope.py', "config file configs/nope.py could not be loaded: [Errno 2] No such file"),
    ('NOGET', 'has no get_config() function'),
])
def test_bad_config_file(tmp_path, config_arg, message):
  if config_arg == 'NOGET':
    config_arg = str(tmp_path / 'noget.py')
    open(config_arg, 'w').write('x = 1\n')
  proc = run_train(f'--config={config_arg}', f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
  assert message in proc.stderr


def test_image_size_not_divisible_by_the_downsampling(tmp_path, tfds_dir):
  workdir = tmp_path / 'w'
  proc = run_train('--config=configs/default.py', f'--workdir={workdir}',
                   '--config.model.features=(16,32,64)', tfds_dir=tfds_dir)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr[-2000:]
  assert 'image size 28x28 is not divisible by 8, the total downsampling of 3' in proc.stderr
  assert not workdir.exists() or not os.listdir(workdir)


def test_unknown_loss_term_lists_the_known_ones(tmp_path):
  config_file = tmp_path / 'bad_loss.py'
  config_file.write_text('from configs import default\n\n\ndef get_config():\n'
                         '  config = default.get_config()\n'
                         "  config.loss = {'rec_l7': 1.0}\n  return config\n")
  proc = run_train(f'--config={config_file}', f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr[-2000:]
  assert "'rec_l7'; known: " in proc.stderr and 'rec_bce' in proc.stderr
  assert not (tmp_path / 'w').exists() or not os.listdir(tmp_path / 'w')
