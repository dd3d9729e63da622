"""segae_jax.tools.generate and segae_jax.tools.compress: their pure helpers, and both commands end to end on a
VAE trained for a few steps on the real Fashion-MNIST."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, untrained_run
from segae_jax.tools import compress, generate
from segae_jax.errors import UserInputError


def run_module(module, *args):
  return subprocess.run([sys.executable, '-m', f'segae_jax.tools.{module}', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def grid_shape(rows, cols, size=28, pad=2):
  return (rows * (size + pad) + pad, cols * (size + pad) + pad)


# ----------------------------------------------------------------------------- pure helpers


def test_interpolate_endpoints_and_midpoint():
  z0 = np.array([0.0, 1.0, -2.0, 3.5], np.float32)
  z1 = np.array([4.0, -1.0, 2.0, 3.5], np.float32)
  line = generate.interpolate(z0, z1, 5)
  assert line.shape == (5, 4) and line.dtype == np.float32
  np.testing.assert_array_equal(line[0], z0)
  np.testing.assert_array_equal(line[-1], z1)
  np.testing.assert_allclose(line[2], (z0 + z1) / 2, atol=1e-7)
  np.testing.assert_allclose(line[1], [1.0, 0.5, -1.0, 3.5], atol=1e-7)
  with pytest.raises(ValueError):
    generate.interpolate(z0, z1, 1)


def test_traversal_codes_changes_one_dimension():
  z = np.array([0.5, -1.0, 2.0], np.float32)
  codes = generate.traversal_codes(z, 1, [-3.0, 0.0, 3.0])
  assert codes.shape == (3, 3) and codes.dtype == np.float32
  np.testing.assert_array_equal(codes[:, 1], [-3.0, 0.0, 3.0])
  np.testing.assert_array_equal(codes[:, [0, 2]], [[0.5, 2.0]] * 3)
  assert z[1] == -1.0  # The input is not modified.


def test_kl_per_dim_and_top_kl_dims():
  # 2 examples, 4 dims. Dim 0: the prior itself (KL 0). Dim 1: mean 2, var 1 -> KL 2.
  # Dim 2: mean 0, var e^-2 -> 0.5 * (e^-2 - 1 + 2) = 0.5 + 0.5 e^-2. Dim 3: means +-1, var 1 -> 0.5.
  mean = np.array([[0.0, 2.0, 0.0, 1.0], [0.0, 2.0, 0.0, -1.0]])
  logvar = np.array([[0.0, 0.0, -2.0, 0.0], [0.0, 0.0, -2.0, 0.0]])
  expected = np.array([0.0, 2.0, 0.5 + 0.5 * np.exp(-2.0), 0.5])
  np.testing.assert_allclose(generate.kl_per_dim(mean, logvar), expected, rtol=1e-12)
  dims, kl = generate.top_kl_dims(mean, logvar, 2)
  assert dims.tolist() == [1, 2]
  np.testing.assert_allclose(kl, [2.0, 0.5 + 0.5 * np.exp(-2.0)])
  dims, _ = generate.top_kl_dims(mean, logvar, 10)
  assert dims.tolist() == [1, 2, 3, 0]


def test_top_variance_dims():
  codes = np.array([[0.0, 5.0, 1.0], [0.0, -5.0, 3.0]])
  dims, var = generate.top_variance_dims(codes, 2)
  assert dims.tolist() == [1, 2]
  np.testing.assert_allclose(var, [25.0, 1.0])


def test_uniform_quantize_hand_computed():
  # 2 bits over [0, 3]: levels 0, 1, 2, 3.
  z = np.array([0.4, 1.6, 2.5001, -7.0, 9.0, 3.0, 0.0], np.float32)
  q = compress.uniform_quantize(z, 0.0, 3.0, 2)
  np.testing.assert_array_equal(q, [0.0, 2.0, 3.0, 0.0, 3.0, 3.0, 0.0])
  assert q.dtype == np.float32
  assert compress.quantize(z, 0.0, 3.0, 2).tolist() == [0, 2, 3, 0, 3, 3, 0]
  # Per-dimension ranges; 1 bit keeps only the two ends; a constant dimension maps to its value.
  z2 = np.array([[0.2, 10.0, 5.0], [0.9, 11.0, 5.0]])
  q2 = compress.uniform_quantize(z2, np.array([0.0, 10.0, 5.0]), np.array([1.0, 12.0, 5.0]), 1)
  np.testing.assert_array_equal(q2, [[0.0, 10.0, 5.0], [1.0, 12.0, 5.0]])


@pytest.mark.parametrize('bits', [1, 2, 5, 8, 16])
def test_uniform_quantize_error_bound(bits):
  rng = np.random.default_rng(bits)
  low, high = np.array([-3.0, 0.0, -0.5]), np.array([2.0, 0.1, 4.0])
  z = rng.uniform(low, high, size=(5000, 3)).astype(np.float32)
  q = compress.uniform_quantize(z, low, high, bits)
  bound = (high - low) / (2 * (2 ** bits - 1))
  err = np.abs(z.astype(np.float64) - q.astype(np.float64))
  assert np.all(err <= bound + 1e-6 * (high - low))
  assert len(np.unique(q[:, 0])) <= 2 ** bits
  # Values outside the range are clipped to it first.
  np.testing.assert_allclose(
      compress.uniform_quantize(np.array([[-100.0, 100.0, 4.5]]), low, high, bits),
      [[-3.0, 0.1, 4.0]], rtol=1e-12)


def test_bits_per_image_and_parse_bits():
  assert compress.bits_per_image(32, 8) == 256
  assert compress.bits_per_image(64, 4) == 256
  assert compress.parse_bits(['8']) == [8]
  assert compress.parse_bits(['16', '2', '2']) == [2, 16]
  for bad, message in [(['0'], '--bits must be from 1 to 16, got 0'),
                       (['17'], '--bits must be from 1 to 16, got 17'),
                       (['x'], "--bits: 'x' is not an integer"), ([], '--bits is empty')]:
    with pytest.raises(UserInputError, match=message):
      compress.parse_bits(bad)


# ----------------------------------------------------------------------------- without training


def _small_dataset(num_test=100):
  """Random 28x28 uint8 images held in memory, shaped like data.build's Fashion-MNIST."""
  from segae_jax import data
  rng = np.random.default_rng(0)
  split = lambda n: data.ArraySource({'image': rng.integers(0, 256, (n, 28, 28, 1), np.uint8),
                                      'label': rng.integers(0, 10, n)})
  return data.Dataset(name='fashion_mnist', train=split(200), test=split(num_test),
                      image_shape=(28, 28, 1), num_classes=10, class_names=[],
                      preprocess=lambda ex, rng: data.scale_images(ex, rng))


@pytest.fixture
def fake_ae_run(monkeypatch):
  """load_run and data.build patched: an untrained AE on 100 random test images (no disk)."""
  from segae_jax import data
  from segae_jax.tools import common
  run = untrained_run('ae')
  monkeypatch.setattr(common, 'load_run', lambda workdir, checkpoint: run)
  monkeypatch.setattr(data, 'build', lambda config: _small_dataset())
  return run


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_generate_autoencoder_skips_samples_and_refuses_them_when_asked(fake_ae_run, tmp_path):
  with pytest.raises(UserInputError, match="samples need a VAE .* holds a 'ae' model"):
    generate.generate(str(tmp_path), pictures=['samples'])
  assert not os.listdir(tmp_path)  # Refused before writing anything.
  results = generate.generate(str(tmp_path), num=4, pairs=2, steps=3, dims=3)
  assert sorted(results['files']) == ['interpolations.png', 'reconstructions.png',
                                      'traversals.png']
  assert results['files']['interpolations.png']['shape'] == [*grid_shape(2, 5), 1]
  assert 'samples' in results['skipped'] and 'kl_total_nats' not in results
  trav = results['traversal']
  assert len(trav['dims']) == 3 and trav['variance'] == sorted(trav['variance'], reverse=True)
  assert trav['scale'] == pytest.approx(np.sqrt(trav['variance']), rel=1e-4)
  assert sorted(os.listdir(tmp_path / 'generate')) == [
      '.segae_output.json', 'generate.json', 'interpolations.png', 'reconstructions.png',
      'traversals.png']  # The marker by which a later generate knows its own folder.


def test_compress_in_process_matches_a_direct_computation(fake_ae_run, tmp_path):
  """The JSON numbers recomputed here from the model's own encode/decode and the helpers."""
  import jax
  from segae_jax.training import metrics
  out = str(tmp_path / 'c.json')
  r = compress.compress(str(tmp_path), [3], out)
  ds = _small_dataset()
  model, variables = fake_ae_run.model, fake_ae_run.variables
  train = ds.preprocess(ds.train.arrays, None)['image']
  test = ds.preprocess(ds.test.arrays, None)['image']
  low = np.min(model.apply(variables, train, method='encode'), 0)
  high = np.max(model.apply(variables, train, method='encode'), 0)
  z = np.asarray(model.apply(variables, test, method='encode'))
  recon = np.asarray(model.apply(variables, compress.uniform_quantize(z, low, high, 3),
                                 method=lambda m, q: jax.nn.sigmoid(m.decode(q))))
  assert r['quantised'][0]['psnr'] == pytest.approx(float(np.mean(metrics.psnr(recon, test))),
                                                    abs=1e-3)
  assert r['quantised'][0]['bits_per_image'] == 24 and r['num_test_images'] == 100
  assert r['range_low'] == pytest.approx(low.tolist(), abs=1e-5)
  assert json.load(open(out))['quantised'] == r['quantised']


def test_non_autoencoder_is_refused(fake_ae_run, tmp_path):
  fake_ae_run.model = object()  # Anything that is not an Autoencoder (e.g. a U-Net).
  fake_ae_run.config.model.name = 'unet'
  with pytest.raises(UserInputError, match="holds a 'unet' model; this command needs an "):
    compress.compress(str(tmp_path), 8)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_generate_end_to_end(tiny_vae_workdir):
  proc = run_module('generate', f'--workdir={tiny_vae_workdir}', '--num=16', '--pairs=4', '--steps=10',
                    '--dims=4', '--seed=3')
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = os.path.join(tiny_vae_workdir, 'generate')
  shapes = {name: np.asarray(Image.open(os.path.join(out, name))).shape
            for name in ('samples.png', 'reconstructions.png', 'interpolations.png',
                         'traversals.png')}
  assert shapes == {
      'samples.png': grid_shape(2, 8),            # 16 samples, 8 per row.
      'reconstructions.png': grid_shape(4, 8),    # 2 x (8 inputs above 8 reconstructions).
      'interpolations.png': grid_shape(4, 12),    # 4 pairs: image A, 10 decoded codes, image B.
      'traversals.png': grid_shape(4, 8),         # 4 dims: the image, 7 offsets -3..3 sd.
  }
  samples = np.asarray(Image.open(os.path.join(out, 'samples.png')))
  assert samples.std() > 0
  info = json.load(open(os.path.join(out, 'generate.json')))
  assert info['step'] == 6 and info['model'] == 'vae' and info['latent_dim'] == 32
  assert sorted(info['files']) == sorted(shapes) and info['skipped'] == {}
  assert all(tuple(info['files'][k]['shape'][:2]) == v for k, v in shapes.items())
  assert len(set(info['test_indices'])) == 16
  trav = info['traversal']
  assert len(trav['dims']) == 4 and trav['kl_nats'] == sorted(trav['kl_nats'], reverse=True)
  kl = np.array(info['kl_per_dim_nats'])
  assert len(kl) == 32 and np.all(kl >= -1e-6)
  assert trav['dims'] == np.argsort(-kl, kind='stable')[:4].tolist()
  assert trav['kl_nats'] == pytest.approx(kl[trav['dims']], abs=1e-5)
  # Same inputs (seeded binarisation, same batches) as train.evaluate: the KL term it reported.
  results = json.load(open(os.path.join(tiny_vae_workdir, 'results.json')))
  assert info['kl_total_nats'] == pytest.approx(results['test']['kl'], rel=1e-3)
  assert 'traversed dims:' in proc.stdout and 'wrote samples.png' in proc.stdout


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_compress_end_to_end(tiny_vae_workdir):
  proc = run_module('compress', f'--workdir={tiny_vae_workdir}', '--bits=2,16')
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.load(open(os.path.join(tiny_vae_workdir, 'compress.json')))
  assert (r['step'], r['latent_dim'], r['raw_bits_per_image']) == (6, 32, 6272)
  assert (r['num_train_images'], r['num_test_images']) == (60000, 10000)
  q2, q16 = r['quantised']
  assert (q2['bits'], q2['bits_per_image'], q2['compression_ratio']) == (2, 64, 98.0)
  assert (q16['bits'], q16['bits_per_image'], q16['compression_ratio']) == (16, 512, 12.25)
  u = r['unquantised']
  assert 5 < u['psnr'] < 40 and 0 < u['pixel_mse'] < 0.3
  assert abs(q16['psnr'] - u['psnr']) < 0.05
  # What quantisation alone changes: far less at 16 bits than at 2. (Whether 2 bits lowers the
  # PSNR against the image depends on training: a 6-step decoder barely uses the code.)
  assert q16['psnr_vs_unquantised'] > 60 and q2['psnr_vs_unquantised'] < q16['psnr_vs_unquantised']
  width = np.array(r['range_high']) - np.array(r['range_low'])
  assert np.all(width > 0)
  assert q2['max_abs_error'] <= width.max() / (2 * 3) + 1e-5
  assert q16['max_abs_error'] <= width.max() / (2 * 65535) + 1e-5
  assert 0 <= r['clipped_fraction'] < 0.01
  assert '98.0' in proc.stdout and '(unquantised)' in proc.stdout


@pytest.mark.parametrize('module,args,message', [
    ('compress', ['--bits=0'], '--bits must be from 1 to 16, got 0'),
    ('generate', ['--pictures=samples,sketches'], '--pictures: unknown sketches; known: samples'),
])
@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_bad_input_one_line_exit_2(tmp_path, module, args, message):
  before = set(os.listdir(tmp_path))
  proc = run_module(module, f'--workdir={tmp_path}', *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith('error: ') and proc.stderr.count('\n') == 1, proc.stderr
  assert message in proc.stderr
  assert set(os.listdir(tmp_path)) == before


@pytest.mark.parametrize('kwargs,message', [
    ({'num': 0}, '--num must be >= 1, got 0'), ({'steps': 1}, '--steps must be >= 2, got 1'),
    ({'pairs': -1}, '--pairs must be >= 1, got -1'), ({'dims': 0}, '--dims must be >= 1, got 0'),
    ({'pictures': []}, '--pictures: unknown (empty)'),
])
def test_generate_bad_arguments_before_loading(tmp_path, kwargs, message):
  with pytest.raises(UserInputError, match=re.escape(message)):
    generate.generate(str(tmp_path), **kwargs)  # Fails before looking at the (empty) workdir.


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_workdir_without_run(tmp_path):
  proc = run_module('compress', f'--workdir={tmp_path}')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
  assert 'is not a training workdir' in proc.stderr
