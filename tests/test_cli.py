"""train.py end to end on the real data, and its one-line errors for bad input."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import default
from conftest import ROOT, run_train, set_fields
from segae_jax import cli, training
from segae_jax.errors import UserInputError


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
    assert r['train/loss'] == pytest.approx(r['train/rec_bce'] + r['train/kl'], rel=1e-5)
  # The default warmup (100) clipped to the 6 steps: the rate rises linearly towards the peak.
  assert [r['train/learning_rate'] for r in train_records] == pytest.approx(
      [2e-3 * s / 6 for s in (1, 3, 5)], rel=1e-5)
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


def test_evaluate_reproduces_the_vae_runs_own_test_metrics(trained_workdir):
  """The VAE samples its latents at evaluation: only the run's own evaluation key gives its
  numbers back. Same devices, strategy and batches as training: equal, not close."""
  from segae_jax.tools import evaluate
  results = json.load(open(os.path.join(trained_workdir, 'results.json')))
  evaluated = evaluate.evaluate_run(trained_workdir, checkpoint='latest')
  assert evaluated['step'] == 6 and evaluated['checkpoint'] == 'latest'
  assert evaluated['metrics'] == results['test']
  assert json.load(open(os.path.join(trained_workdir, 'eval_test.json'))) == evaluated


def _snapshot(workdir):
  out = {}
  for dirpath, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(dirpath, name)
      out[path] = open(path, 'rb').read()
  return out


def test_workdir_of_another_model_is_refused_untouched(trained_workdir, tmp_path):
  from configs import ae_fashion_mnist
  config = ae_fashion_mnist.get_config()
  config.data.tfds_dir = json.load(open(os.path.join(trained_workdir, 'config.json')))['data'][
      'tfds_dir']
  before = _snapshot(trained_workdir)
  with pytest.raises(UserInputError) as error:
    training.train_and_evaluate(config, trained_workdir)
  message = str(error.value)
  assert "holds model=" in message and "'name': 'vae'" in message
  assert "'name': 'ae'" in message and 'use another --workdir' in message
  assert _snapshot(trained_workdir) == before


def _assert_refused_untouched(tmp_path, proc, message):
  """One line `error: ...` naming the problem, status 2, no dataset half-built, nothing written."""
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith('error: ') and proc.stderr.count('\n') == 1, proc.stderr
  assert message in proc.stderr
  assert not (tmp_path / 'tfds').exists()
  assert not (tmp_path / 'w').exists() or not os.listdir(tmp_path / 'w')


# What only the command line can get wrong (absl parsing of the overrides), and one config value
# refused by training itself, to show its error reaches the user as one line with status 2.
@pytest.mark.parametrize('args,message', [
    (['--config.nope=1'], "unknown config key 'config.nope'"),
    (['--config.model.latnt_dim=8'],
     "unknown config key 'config.model.latnt_dim' (from --config.model.latnt_dim=8): the config has no such field; did you mean 'latent_dim'?"),
    (['--config.batch_size=abc'], "flag --config.batch_size=abc: invalid literal for int()"),
    (['--config.batch_size=0'], 'config.batch_size must be a positive integer, got 0'),
    # No cluster in this environment (conftest clears the variables JAX's detection reads).
    (['--distributed'], '--distributed: no cluster detected (looked for Slurm: SLURM_JOB_ID'),
    (['--workdir=foo://bucket/run'], 'workdir foo://bucket/run: no installed filesystem serves'),
])
def test_bad_input_one_line_exit_2(tmp_path, args, message):
  proc = run_train('--config=configs/default.py', f'--workdir={tmp_path / "w"}', *args,
                   f'--config.data.tfds_dir={tmp_path / "tfds"}')  # A later --workdir wins.
  _assert_refused_untouched(tmp_path, proc, message)


def _bad_values():
  devices = jax.device_count()
  cases = [
      ({'batch_size': 0}, 'config.batch_size must be a positive integer, got 0'),
      ({'num_train_steps': -5}, 'config.num_train_steps must be a positive integer, got -5'),
      ({'learning_rate': 0.0}, 'config.learning_rate must be > 0, got 0.0'),
      ({'warmup_steps': -1}, 'config.warmup_steps must be an integer >= 0, got -1'),
      ({'model.name': 'unet3d'},
       "unknown model 'unet3d'; known: ae, segae, segnet, sparse_ae, unet, unet_ae, vae, vae_unet"),
      ({'optimizer': 'adagrad'}, "unknown optimizer 'adagrad'; known: adam, adamw, sgd"),
      ({'data.name': 'mnist'}, "unknown dataset 'mnist'; known: fashion_mnist, "
       'fashion_mnist_scenes, image_folder, oxford_iiit_pet, segmentation_folder'),
      ({'data.name': 'image_folder', 'model.name': 'unet'},
       "config.data.name=image_folder has no masks, but model 'unet' segments"),
      ({'data.name': 'image_folder', 'loss.seg_ce': 1.0},
       'has no masks, but config.loss term(s) seg_ce segments'),
      ({'data.unlabeled_per_batch': 4},
       'config.data.unlabeled_per_batch=4 needs an unlabelled pool'),
      ({'data.unlabeled_dir': '/data/unlabeled', 'data.unlabeled_per_batch': 128},
       'config.data.unlabeled_per_batch=128 must be smaller than the batch size 128'),
      ({'data.unlabeled_dir': '/data/unlabeled', 'data.unlabeled_per_batch': 8,
        'labeled_fraction': 0.5}, 'with config.data.unlabeled_dir the unlabelled images are real'),
      ({'loss.rec_bce': 0.0, 'loss.kl': 0.0}, 'config.loss: every weight is zero'),
      ({'parallel': 'dp'}, "unknown config.parallel 'dp'; known: pmap, jit"),
      ({'labeled_fraction': 1.5}, 'config.labeled_fraction must be in (0, 1], got 1.5'),
      ({'nonfinite': 'ignore'}, "config.nonfinite must be one of stop, skip, got 'ignore'"),
      ({'compute_dtype': 'float64'},
       "config.compute_dtype must be one of float32, bfloat16, float16, got 'float64'"),
      ({'conv_impl': 'fast'}, "config.conv_impl='fast'; expected one of auto, xla, matmul_grad"),
      ({'data.idx_dir': '/nonexistent/fmnist'},
       'Fashion-MNIST data directory /nonexistent/fmnist does not exist; run `make data`'),
      ({'loss': {'rec_l7': 1.0}}, "'rec_l7'; known: "),
      ({'data.num_workers': -1}, 'config.data.num_workers=-1: expected an integer >= 0'),
      ({'data.cache': 'sometimes'},
       "config.data.cache='sometimes': expected one of ('auto', 'memory', 'stream')"),
  ]
  if devices > 1:  # Any batch divides over one device.
    cases.append(({'batch_size': 8 * devices + 1},
                  f'config.batch_size={8 * devices + 1} is not divisible by the {devices} devices'))
  return cases


def _default_config(tmp_path, **overrides):
  """configs/default.py with `overrides` ({'a.b': value}) and its dataset under tmp_path/tfds."""
  config = default.get_config()
  config.data.tfds_dir = str(tmp_path / 'tfds')
  return set_fields(config, overrides)


@pytest.mark.parametrize('overrides,message', _bad_values(), ids=lambda v: str(v)[:40])
def test_bad_config_value_refused_before_anything_is_written(tmp_path, overrides, message):
  """train_and_evaluate, as train.py calls it: the same UserInputError that the command prints as
  one line with status 2 (shown above), raised before any dataset or workdir file is made."""
  config = _default_config(tmp_path, **overrides)
  with pytest.raises(UserInputError) as error:
    training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert message in str(error.value)
  assert not (tmp_path / 'tfds').exists()
  assert not (tmp_path / 'w').exists() or not os.listdir(tmp_path / 'w')


def test_missing_idx_files_in_given_folder(tmp_path):
  (tmp_path / 'idx').mkdir()
  with pytest.raises(UserInputError, match='Fashion-MNIST files missing in .*make data'):
    config = _default_config(tmp_path, **{'data.idx_dir': str(tmp_path / 'idx')})
    training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'tfds' / 'fashion_mnist_idx' / '1.0.0').exists()


def test_bare_config_name_is_always_the_shipped_config(tmp_path, monkeypatch):
  """A file or a folder called `folder` in the current directory never shadows the shipped
  configs/folder.py; a path (a separator or .py) is a file, checked here in one line."""
  from segae_jax import shipped_configs
  monkeypatch.chdir(tmp_path)
  shipped = os.path.join(shipped_configs.directory(), 'folder.py')
  (tmp_path / 'folder').write_text('raise SystemExit("the user\'s file was executed")\n')
  assert shipped_configs.resolve('folder') == shipped
  assert shipped_configs.resolve('folder:abc') == shipped + ':abc'
  os.remove(tmp_path / 'folder')
  (tmp_path / 'folder').mkdir()
  assert shipped_configs.resolve('folder') == shipped
  (tmp_path / 'mine.py').write_text('def get_config(): pass\n')
  assert shipped_configs.resolve('mine.py') == 'mine.py'
  for value, message in [('./folder', 'is a folder'), ('nothere.py', 'does not exist'),
                         ('sub/x.py', 'does not exist'), ('nosuch', 'no shipped config'),
                         ('', 'is empty')]:
    with pytest.raises(UserInputError, match=message):
      shipped_configs.resolve(value)


def test_missing_config_file_with_overrides_is_one_line(tmp_path):
  proc = run_train(f'--config={tmp_path / "nothere.py"}', f'--workdir={tmp_path / "w"}',
                   '--config.seed=3', '--config.batch_size=8')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
  assert 'nothere.py does not exist' in proc.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('config_arg,message', [
    ('configs/nope.py', 'config file configs/nope.py does not exist'),
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
  config = _default_config(tmp_path, **{'model.features': (16, 32, 64)})
  config.data.tfds_dir = tfds_dir
  with pytest.raises(UserInputError,
                     match='image size 28x28 is not divisible by 8, the total downsampling of 3'):
    training.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists() or not os.listdir(tmp_path / 'w')


@pytest.mark.faults
def test_installed_commands_run_from_another_directory(tmp_path):
  """segae-train with a shipped config by name, then segae-evaluate, segae-predict and
  segae-export on its workdir, all run from a folder outside the repository (pip's entry points
  beside this interpreter); the old module names are gone."""
  rng = np.random.default_rng(0)
  for sub in ('images', 'masks'):
    (tmp_path / sub).mkdir()
  for i in range(8):
    mask = np.zeros((16, 16), np.uint8)
    top, left = rng.integers(0, 8, 2)
    mask[top:top + 8, left:left + 8] = 1
    Image.fromarray(np.where(mask == 1, 200, 30).astype(np.uint8)).save(
        tmp_path / 'images' / f'im{i}.png')
    Image.fromarray(mask).save(tmp_path / 'masks' / f'im{i}.png')
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  bin_dir = os.path.dirname(sys.executable)
  from conftest import cpu_env
  env = {k: v for k, v in cpu_env(1).items() if k != 'PYTHONPATH'}
  command = lambda name, *args: subprocess.run(
      [os.path.join(bin_dir, name), *args], cwd=elsewhere, env=env, capture_output=True,
      text=True, timeout=600)
  done = command('segae-train', '--config=folder', '--workdir=run',
                 f'--config.data.images_dir={tmp_path / "images"}',
                 f'--config.data.masks_dir={tmp_path / "masks"}', '--config.data.channels=1',
                 f'--config.data.tfds_dir={tmp_path / "tfds"}', '--config.data.test_fraction=0.25',
                 '--config.data.image_size=(16, 16)', '--config.model.features=(4, 8)',
                 '--config.batch_size=4', '--config.eval_batch_size=2', '--config.num_pictures=2',
                 '--config.num_train_steps=2', '--config.eval_every_steps=2')
  assert done.returncode == 0, done.stderr[-3000:]
  assert os.path.isfile(elsewhere / 'run' / 'results.json')
  done = command('segae-evaluate', '--workdir=run')
  assert done.returncode == 0 and 'mIoU' not in done.stderr, done.stderr[-3000:]
  assert os.path.isfile(elsewhere / 'run' / 'eval_test.json')
  done = command('segae-predict', '--workdir=run', f'--input={tmp_path / "images"}',
                 '--output=masks')
  assert done.returncode == 0, done.stderr[-3000:]
  # A label map and an overlay per image, and predict's marker.
  assert len(os.listdir(elsewhere / 'masks')) == 17
  done = command('segae-export', '--workdir=run', '--output=model')
  assert done.returncode == 0, done.stderr[-3000:]
  bad = command('segae-train', '--config=nosuch', '--workdir=w')
  assert bad.returncode == 2 and 'no shipped config of that name' in bad.stderr
  assert not (elsewhere / 'w').exists()
  for tool in ('evaluate', 'predict', 'detect', 'unsupervised', 'generate', 'compress', 'probe',
               'sweep'):
    assert importlib.util.find_spec(f'segae_jax.{tool}') is None, tool


def test_tfds_custom_configuration_line_is_not_printed(caplog):
  from absl import logging as absl_logging
  cli.setup_logging()
  absl_logging.warning('Using custom data configuration: %s', 'FolderConfig(name=...)')
  absl_logging.warning('another warning')
  messages = [r.getMessage() for r in caplog.records]
  assert 'another warning' in messages
  assert not any('custom data configuration' in m for m in messages)


def test_a_repeated_warning_of_ours_is_printed_once():
  """A folder is read twice (checked, then stored): its per-file warnings (a TIFF's axes read,
  a conversion) once each; other warnings and ours with other text all pass."""
  import logging
  once = cli.OnceEach()
  record = lambda name, msg, level=logging.WARNING: logging.LogRecord(
      name, level, __file__, 1, msg, (), None)
  assert once.filter(record('segae_jax.data.images', 'a.tif: axes QYX unknown'))
  assert not once.filter(record('segae_jax.data.images', 'a.tif: axes QYX unknown'))
  assert once.filter(record('segae_jax.data.images', 'b.tif: axes QYX unknown'))
  assert once.filter(record('segae_jax.training.loop', 'step 3 test loss=1', logging.INFO))
  assert once.filter(record('segae_jax.training.loop', 'step 3 test loss=1', logging.INFO))
  assert once.filter(record('orbax', 'a.tif: axes QYX unknown'))
  assert once.filter(record('orbax', 'a.tif: axes QYX unknown'))
