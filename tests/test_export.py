"""tools/export.py and segae_jax.Segmenter: a trained U-Net exported with jax.export, read back
without its workdir, gives the workdir's labels; bad paths and inputs get one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import segae_jax
from conftest import ROOT, cpu_env
from segae_jax.errors import UserInputError
from segae_jax.tools import common, export


@pytest.fixture(scope='module')
def exported(unet_scenes_run, tmp_path_factory):
  workdir, _ = unet_scenes_run
  output = str(tmp_path_factory.mktemp('export') / 'model')
  return workdir, output, export.export_run(workdir, output, 'latest')


def test_export_gives_the_workdirs_labels_at_any_size_and_batch(exported):
  workdir, output, spec = exported
  assert sorted(os.listdir(output)) == ['.segae_output.json', 'logits.jaxexport', 'model.json']
  assert os.listdir(os.path.dirname(output)) == ['model']  # No staging folder left.
  run = common.load_run(workdir, 'latest')
  assert spec['input_shape'] == list(run.image_shape)
  assert spec['class_names'] == list(run.class_names) and spec['num_classes'] == 11
  from_workdir = segae_jax.Segmenter.from_workdir(workdir, checkpoint='latest', batch_size=4)
  from_export = segae_jax.Segmenter.from_export(output, batch_size=4)
  # Both routes give the public class (api.py's, with from_workdir), not only its base.
  assert type(from_workdir) is segae_jax.Segmenter and type(from_export) is segae_jax.Segmenter
  rng = np.random.default_rng(0)
  height, width, _ = run.image_shape
  images = [rng.integers(0, 256, (height, width), dtype=np.uint8),          # one forward pass
            rng.integers(0, 256, (height + 21, 2 * width + 3), dtype=np.uint8)]  # tiled
  for image in images:
    labels = from_export.predict(image)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, from_workdir.predict(image))
  # The symbolic batch: the same function on batches of 1 and 3, and the logits of the run.
  pixels = rng.integers(0, 256, (3, height, width, 1)).astype(np.float32)
  logits = run.infer(pixels / np.float32(255), common.seg_logits, 3)
  from jax import export as jax_export
  call = jax_export.deserialize(bytearray(open(os.path.join(output, 'logits.jaxexport'),
                                               'rb').read())).call
  for n in (1, 3):
    np.testing.assert_allclose(np.asarray(call(pixels[:n])), logits[:n], rtol=1e-4, atol=1e-4)


def test_export_and_segmenter_refuse_bad_paths_and_images(exported, tiny_vae_workdir, tmp_path):
  workdir, output, _ = exported
  with pytest.raises(UserInputError, match=r'does not segment'):
    export.export_run(tiny_vae_workdir, str(tmp_path / 'vae_model'))
  assert not os.listdir(tmp_path)  # Nothing written, not even the staging folder.
  with pytest.raises(UserInputError, match=r'no exported model \(model.json and logits'):
    segae_jax.Segmenter.from_export(str(tmp_path))
  segmenter = segae_jax.Segmenter.from_export(output)
  with pytest.raises(UserInputError, match=r'image 0: image has 4 channel\(s\) \(uint8\), but the '
                                           r'run trained on 1-channel 8-bit images'):
    segmenter.predict(np.zeros((8, 8, 4), np.uint8))
  with pytest.raises(UserInputError, match=r'image 0: 16-bit image \(uint16\), but the run '
                                           r'trained on 8-bit images \(uint8, normalize=unit\)'):
    segmenter.predict(np.zeros((8, 8), np.uint16))  # The export's normalisation, checked.
  spec = json.load(open(os.path.join(output, 'model.json')))
  (tmp_path / 'old').mkdir()
  (tmp_path / 'old' / 'logits.jaxexport').write_bytes(b'')
  (tmp_path / 'old' / 'model.json').write_text(json.dumps({**spec, 'format': 99}))
  with pytest.raises(UserInputError, match=r'model.json: format 99; this version reads format 1'):
    segae_jax.Segmenter.from_export(str(tmp_path / 'old'))


def test_export_command_writes_the_model_and_fails_in_one_line(exported, tmp_path):
  workdir, _, _ = exported
  output = str(tmp_path / 'cli_model')
  done = subprocess.run([sys.executable, '-m', 'segae_jax.tools.export', f'--workdir={workdir}',
                         f'--output={output}', '--checkpoint=latest'], cwd=ROOT, env=cpu_env(1),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'exported unet' in done.stdout and os.path.isfile(os.path.join(output, 'model.json'))
  bad = subprocess.run([sys.executable, '-m', 'segae_jax.tools.export',
                        f'--workdir={tmp_path / "nothing"}', f'--output={tmp_path / "m"}'],
                       cwd=ROOT, env=cpu_env(1), capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and 'not a training workdir' in bad.stderr
  assert not (tmp_path / 'm').exists()
