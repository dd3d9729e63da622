"""The fault harness over generated folders (hypothesis): folders of images and masks of many
sizes, dtypes, channel counts and bit depths, with corrupt and truncated bytes, stray files,
duplicate stems, missing masks and masks out of range, through the real folder route.

Every run ends in one of two ways: success with its outputs, or a UserInputError (the commands'
`error: ...` line and exit status 2) of one line. Either way no file outside the run's own outputs
(the workdir, the tfds folder, predict's output folder) changes: the user's folders are checked
against a checksum of every file before and after.

The default suite builds the dataset of each generated folder in-process, as training's first
phase does; `make test-faults` runs the installed commands end to end (segae-train, then
segae-predict on success) in subprocesses.
"""
import hashlib
import io
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from PIL import Image

from conftest import cpu_env, set_fields
from segae_jax.errors import UserInputError

DEFECTS = ('truncated_image', 'garbage_image', 'truncated_mask', 'empty_image', 'stray_file',
           'hidden_file', 'sub_folder', 'duplicate_stem', 'mask_out_of_range', 'missing_mask',
           'missing_image', 'mask_size_mismatch')


@st.composite
def folders(draw):
  """A description of a folder of images and masks: what `write_folder` writes."""
  kind = draw(st.sampled_from(['png8', 'png16', 'tif8', 'tif16', 'tif_float']))
  channels = draw(st.sampled_from([1, 3] if kind == 'png8' else [1] if kind == 'png16'
                                  else [1, 2, 3, 4]))
  return {
      'kind': kind, 'channels': channels,
      'count': draw(st.integers(1, 14)),
      'sizes': draw(st.lists(st.tuples(st.integers(8, 40), st.integers(8, 40)), min_size=1,
                             max_size=3)),
      'num_classes': draw(st.integers(2, 4)),
      'given_classes': draw(st.booleans()),
      # Half the folders are clean, so that the successful path is exercised as often.
      'defects': draw(st.one_of(st.just([]), st.lists(st.sampled_from(DEFECTS), min_size=1,
                                                       max_size=2, unique=True))),
      'seed': draw(st.integers(0, 2 ** 16)),
  }


def _image(rng, kind, channels, height, width):
  shape = (height, width) if channels == 1 else (height, width, channels)
  if kind in ('png8', 'tif8'):
    return rng.integers(0, 256, shape, dtype=np.uint8)
  if kind in ('png16', 'tif16'):
    return rng.integers(0, 65536, shape, dtype=np.uint16)
  return rng.normal(100.0, 30.0, shape).astype(np.float32)


def _save_image(path, array, kind):
  if kind.startswith('png'):
    Image.fromarray(array).save(path + '.png')
    return path + '.png'
  tifffile.imwrite(path + '.tif', array)  # The plain way: a 2-channel image is ambiguous.
  return path + '.tif'


def write_folder(root, spec):
  """Writes spec's folder under root/images and root/masks; returns (images_dir, masks_dir)."""
  rng = np.random.default_rng(spec['seed'])
  images_dir, masks_dir = os.path.join(root, 'images'), os.path.join(root, 'masks')
  os.makedirs(images_dir)
  os.makedirs(masks_dir)
  written = []
  for i in range(spec['count']):
    height, width = spec['sizes'][i % len(spec['sizes'])]
    image = _save_image(os.path.join(images_dir, f'im{i:02d}'),
                        _image(rng, spec['kind'], spec['channels'], height, width), spec['kind'])
    mask = rng.integers(0, spec['num_classes'], (height, width), dtype=np.uint8)
    mask_path = os.path.join(masks_dir, f'im{i:02d}.png')
    Image.fromarray(mask).save(mask_path)
    written.append((image, mask_path))
  first_image, first_mask = written[0]
  # Pixel changes first, then damage to the bytes, then removals: each defect finds the file it
  # changes still readable.
  stage = lambda d: (d.startswith('missing_') * 2 +
                     (d.startswith(('truncated', 'garbage', 'empty'))))
  for defect in sorted(spec['defects'], key=stage):
    if defect in ('truncated_image', 'truncated_mask'):
      path = first_image if defect == 'truncated_image' else first_mask
      data = open(path, 'rb').read()
      open(path, 'wb').write(data[:max(1, len(data) // 2)])
    elif defect == 'garbage_image':
      open(first_image, 'wb').write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    elif defect == 'empty_image':
      open(first_image, 'wb').close()
    elif defect == 'stray_file':
      open(os.path.join(images_dir, 'README.txt'), 'w').write('notes\n')
    elif defect == 'hidden_file':
      open(os.path.join(images_dir, '.DS_Store'), 'wb').write(b'\0\1\2')
    elif defect == 'sub_folder':
      os.makedirs(os.path.join(images_dir, 'old'))
      Image.fromarray(np.zeros((4, 4), np.uint8)).save(os.path.join(images_dir, 'old', 'x.png'))
    elif defect == 'duplicate_stem':
      stem = os.path.splitext(first_image)[0]
      Image.fromarray(np.zeros((8, 8), np.uint8)).save(stem + ('.jpg' if first_image.endswith(
          '.png') else '.png'))
    elif defect == 'mask_out_of_range':
      mask = np.asarray(Image.open(first_mask)).copy()
      mask[0, 0] = 200
      Image.fromarray(mask).save(first_mask)
    elif defect == 'missing_mask':
      os.remove(first_mask)
    elif defect == 'missing_image':
      os.remove(first_image)
    elif defect == 'mask_size_mismatch':
      mask = np.asarray(Image.open(first_mask))
      Image.fromarray(np.pad(mask, ((0, 3), (0, 0)))).save(first_mask)
  return images_dir, masks_dir


# Files a dataset must refuse; the others (a stray text file, a hidden file, a sub-folder in the
# images folder) are left alone by the folder reader.
HARMFUL = {'truncated_image', 'garbage_image', 'truncated_mask', 'empty_image', 'duplicate_stem',
           'missing_mask', 'missing_image', 'mask_size_mismatch'}


def expected(spec, devices):
  """'ok', 'error' or None (either may be right) for a folder's run on `devices` devices."""
  defects, count = set(spec['defects']), spec['count']
  if {'missing_mask', 'missing_image'} <= defects:  # The whole first pair removed: still good.
    defects -= {'missing_mask', 'missing_image'}
    count -= 1
  if {'missing_image', 'duplicate_stem'} <= defects:
    return None  # The other-format namesake becomes the first pair's image: good or not.
  if 'truncated_image' in defects and spec['kind'].startswith('tif'):
    # Cutting a TIFF's second half may leave its pixels whole (tifffile writes them before the
    # later page directories, and reads them by the first page's offset): read or refused.
    return None if not (HARMFUL & defects) - {'truncated_image'} else 'error'
  harmful = HARMFUL & defects
  if spec['given_classes'] and 'mask_out_of_range' in defects:
    harmful.add('mask_out_of_range')
  if harmful or count < 2:
    return 'error'
  # A test split of at least one image and a batch of at least one image per device.
  return 'ok' if count >= devices + 2 else None


def checksums(root, skip=()):
  """{relative path: sha256} of every file under root, folders in `skip` left out."""
  sums = {}
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skip]
    for name in files:
      path = os.path.join(folder, name)
      sums[os.path.relpath(path, root)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return sums


def folder_config(spec, images_dir, masks_dir, tfds_dir):
  """The shipped folder config with only the paths set (the rest inferred from the files), and
  a tiny model and run, as a user with a quick try would have it."""
  import importlib
  config = importlib.import_module('configs.folder').get_config()
  overrides = {'data.images_dir': images_dir, 'data.masks_dir': masks_dir,
               'data.tfds_dir': tfds_dir}
  if spec['given_classes']:
    overrides['data.num_classes'] = spec['num_classes']
  return set_fields(config, overrides)


def _one_line(error):
  message = str(error)
  assert message and '\n' not in message and 'Traceback' not in message, message


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=folders())
def test_generated_folders_prepare_or_fail_in_one_line(spec):
  """Training's data phase (config check, settings from the files, dataset preparation and the
  first training batch) on each generated folder: a dataset, or one line; the user's files
  untouched either way."""
  from segae_jax import data
  from segae_jax.training import validation
  with tempfile.TemporaryDirectory() as tmp:
    user, tfds_dir = os.path.join(tmp, 'user'), os.path.join(tmp, 'tfds')
    images_dir, masks_dir = write_folder(user, spec)
    open(os.path.join(user, 'notes.txt'), 'w').write('keep\n')
    before = checksums(user)
    config = folder_config(spec, images_dir, masks_dir, tfds_dir)
    outcome = expected(spec, jax.device_count())
    try:
      config = validation.validate_config(config)
      dataset = data.run_dataset(config)
    except UserInputError as e:
      _one_line(e)
      assert outcome != 'ok', f'a good folder was refused: {e}'
      assert not _built(tfds_dir), 'a refused folder left a dataset behind'
    else:
      assert outcome != 'error', f'a folder with {spec["defects"]} was accepted'
      assert len(dataset.test) >= 1 and dataset.image_shape[2] == spec['channels']
      if spec['given_classes']:
        assert dataset.num_classes == spec['num_classes']
      elif 'mask_out_of_range' in spec['defects']:
        assert dataset.num_classes == 201  # Label 200 drawn: inferred as the highest class.
      else:  # The highest label drawn; random masks almost always hold every class.
        assert 2 <= dataset.num_classes <= spec['num_classes']
    assert checksums(user) == before


def _built(tfds_dir):
  """Dataset version folders or tfds's incomplete.* folders under tfds_dir."""
  for _, dirs, _ in os.walk(tfds_dir):
    if any(d.startswith('incomplete') or d == '2.0.0' for d in dirs):
      return True
  return False


def _one_error_line(stderr):
  """A refusal's stderr: the failure is its last line, `error: ...`, and the only one; before it
  only the run's log lines (the inferred settings, warnings), never a traceback."""
  lines = stderr.rstrip('\n').split('\n')
  assert lines[-1].startswith('error: '), stderr[-3000:]
  assert sum(line.startswith('error') for line in lines) == 1, stderr[-3000:]
  assert 'Traceback' not in stderr and 'Exception' not in stderr, stderr[-3000:]
  assert all(line[:1] in 'IW' and line[1:5].isdigit() for line in lines[:-1]), stderr[-3000:]


def _command(name, *args, cwd):
  bin_dir = os.path.dirname(sys.executable)
  env = {k: v for k, v in cpu_env(1).items() if k != 'PYTHONPATH'}
  return subprocess.run([os.path.join(bin_dir, name), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.faults
@settings(max_examples=6, deadline=None, derandomize=True,  # No shrinking: minutes of trainings.
          phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])
@given(spec=folders())
def test_generated_folders_train_and_predict_or_fail_in_one_line(spec):
  """The installed commands, run from the user's own folder: segae-train --config=folder with
  only the paths (and a short run), then segae-predict on success. Exit 0 with the outputs, or
  exit 2 with one line; the user's files, and predict's output folder when it belongs to the
  user, untouched."""
  with tempfile.TemporaryDirectory() as tmp:
    user = os.path.join(tmp, 'user')
    images_dir, masks_dir = write_folder(user, spec)
    open(os.path.join(user, 'notes.txt'), 'w').write('keep\n')
    os.makedirs(os.path.join(user, 'mine'))
    open(os.path.join(user, 'mine', 'keep.txt'), 'w').write('mine\n')
    workdir, predicted = os.path.join(user, 'run'), os.path.join(user, 'predicted')
    before = checksums(user)
    flags = ['--config=folder', '--workdir=run', f'--config.data.images_dir={images_dir}',
             f'--config.data.masks_dir={masks_dir}', f'--config.data.tfds_dir={tmp}/tfds',
             '--config.num_train_steps=2', '--config.model.features=(4, 8)']
    if spec['given_classes']:
      flags.append(f'--config.data.num_classes={spec["num_classes"]}')
    done = _command('segae-train', *flags, cwd=user)
    if done.returncode != 0:
      assert done.returncode == 2, done.stderr[-3000:]
      _one_error_line(done.stderr)
      assert not os.path.exists(os.path.join(workdir, 'checkpoints')) or not os.listdir(
          os.path.join(workdir, 'checkpoints'))
    else:
      assert os.path.isfile(os.path.join(workdir, 'results.json'))
      done = _command('segae-predict', '--workdir=run', f'--input={images_dir}',
                      '--output=predicted', cwd=user)
      assert done.returncode in (0, 2), done.stderr[-3000:]
      if done.returncode == 0:
        assert any(f.endswith('_labels.png') for f in os.listdir(predicted))
      mine = _command('segae-predict', '--workdir=run', f'--input={images_dir}',
                      '--output=mine', cwd=user)
      assert mine.returncode == 2, mine.stderr[-3000:]
      _one_error_line(mine.stderr)
    assert checksums(user, skip=(workdir, predicted)) == before
