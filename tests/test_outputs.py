"""segae_jax.tools.outputs, the rule every research command writes by: no command deletes or
overwrites what it did not write. Unit tests on the module (no model), then export, predict and
evaluate end to end on the shared trained U-Net (conftest.unet_scenes_run)."""
import errno
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from segae_jax.errors import UserInputError
from segae_jax.tools import outputs

KEEP = b'keep me\n\x00\xff'


def _tree(root):
  """{relative path: bytes} of every file under `root` (folders as None)."""
  out = {}
  for dirpath, dirs, files in os.walk(root):
    for d in dirs:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = None
    for f in files:
      path = os.path.join(dirpath, f)
      out[os.path.relpath(path, root)] = open(path, 'rb').read()
  return out


def _write(folder, files):
  for name, data in files.items():
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(data)


def _export(path, files, tool='export', **kwargs):
  with outputs.staged_folder(str(path), tool, **kwargs) as staging:
    _write(staging, files)


def _users_folder(tmp_path):
  folder = tmp_path / 'x'
  folder.mkdir()
  (folder / 'notes.txt').write_bytes(KEEP)
  return folder


# ------------------------------------------------------------------------------------ folders --


def test_a_new_folder_is_written_whole_with_the_marker_and_no_staging_left(tmp_path):
  _export(tmp_path / 'deep' / 'model', {'a.bin': b'1', 'b.bin': b'22'})
  assert _tree(tmp_path / 'deep' / 'model') == {
      'a.bin': b'1', 'b.bin': b'22', outputs.MARKER: b'{"tool": "export", "format": 1}'}
  assert os.listdir(tmp_path / 'deep') == ['model']  # No staging or set-aside folder.


def test_a_users_folder_is_refused_and_its_file_survives(tmp_path):
  folder = _users_folder(tmp_path)
  with pytest.raises(UserInputError, match=rf'^{folder} exists and is not a segae-export output '
                                           rf'\(no \.segae_output\.json\); give a new or empty '):
    outputs.check_folder(str(folder), 'export')
  with pytest.raises(UserInputError, match='is not a segae-export output'):
    _export(folder, {'model.json': b'{}'})
  assert _tree(folder) == {'notes.txt': KEEP}
  assert sorted(os.listdir(tmp_path)) == ['x']


def test_the_current_directory_and_its_parents_are_refused(tmp_path, monkeypatch):
  folder = _users_folder(tmp_path)
  (folder / 'sub').mkdir()
  monkeypatch.chdir(folder / 'sub')
  for path in ('.', '..', str(folder)):
    with pytest.raises(UserInputError, match=r'the current directory or a folder holding it'):
      outputs.check_folder(path, 'export')
  # Even when it holds the tool's own marker: the process stands in it.
  _write(str(folder / 'sub'), {outputs.MARKER: b'{"tool": "export", "format": 1}'})
  with pytest.raises(UserInputError, match=r'the current directory'):
    _export('.', {'model.json': b'{}'})
  assert _tree(folder)['notes.txt'] == KEEP and len(_tree(folder)) == 3


def test_a_previous_output_is_replaced_and_an_empty_folder_taken(tmp_path):
  target = tmp_path / 'model'
  _export(target, {'old.bin': b'old'})
  _export(target, {'new.bin': b'new'})
  assert sorted(os.listdir(target)) == [outputs.MARKER, 'new.bin']
  assert os.listdir(tmp_path) == ['model']
  (tmp_path / 'empty').mkdir()
  _export(tmp_path / 'empty', {'new.bin': b'new'})
  assert sorted(os.listdir(tmp_path / 'empty')) == [outputs.MARKER, 'new.bin']


def test_another_tools_output_a_file_a_symlink_and_a_bad_marker_are_refused(tmp_path):
  _export(tmp_path / 'p', {'a_labels.png': b'x'}, tool='predict')
  before = _tree(tmp_path / 'p')
  with pytest.raises(UserInputError, match=r'holds a segae-predict output .*, not '
                                           r'segae-export\'s; give another --output'):
    _export(tmp_path / 'p', {'model.json': b'{}'})
  assert _tree(tmp_path / 'p') == before
  (tmp_path / 'f').write_bytes(KEEP)
  with pytest.raises(UserInputError, match=r'f is a file; expected a folder for the segae-export'):
    outputs.check_folder(str(tmp_path / 'f'), 'export')
  with pytest.raises(UserInputError, match=r'f/model: .*/f is a file, not a folder'):
    outputs.check_folder(str(tmp_path / 'f' / 'model'), 'export')
  os.symlink(tmp_path / 'p', tmp_path / 'link')
  with pytest.raises(UserInputError, match=r'link is a symbolic link'):
    outputs.check_folder(str(tmp_path / 'link'), 'predict')
  bad = _users_folder(tmp_path)
  (bad / outputs.MARKER).write_text('not json')
  with pytest.raises(UserInputError, match=r'holds a segae-\? output'):
    outputs.check_folder(str(bad), 'export')
  assert (tmp_path / 'f').read_bytes() == KEEP and (bad / 'notes.txt').read_bytes() == KEEP


def test_a_failure_mid_write_keeps_the_old_output_and_leaves_no_staging(tmp_path):
  target = tmp_path / 'model'
  _export(target, {'old.bin': b'old'})
  before = _tree(target)
  with pytest.raises(RuntimeError, match='boom'):
    with outputs.staged_folder(str(target), 'export') as staging:
      _write(staging, {'new.bin': b'half'})
      raise RuntimeError('boom')
  assert _tree(target) == before and os.listdir(tmp_path) == ['model']
  # An OSError of the writing (a full disk) is one line naming the folder and the errno text.
  with pytest.raises(UserInputError, match=rf'^cannot write {target}: No space left on device '
                                           r'\(ENOSPC\); nothing there was changed$'):
    with outputs.staged_folder(str(target), 'export') as staging:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  with pytest.raises(UserInputError, match=r'Permission denied \(EACCES\); at sub/x.png; '):
    with outputs.staged_folder(str(tmp_path / 'new' / 'model'), 'export') as staging:
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES),
                            os.path.join(staging, 'sub', 'x.png'))
  # training.writers' own failure on a file in the staging folder: named as the target's.
  from segae_jax.training import writers
  with pytest.raises(writers.WriteFailed, match=rf'^cannot write {target}: Read-only file system '
                                                r'\(EROFS\); at probe.json; nothing there'):
    with outputs.staged_folder(str(target), 'export') as staging:
      raise writers.WriteFailed(os.path.join(staging, 'probe.json'), errno.EROFS)
  assert _tree(target) == before and os.listdir(tmp_path) == ['model']  # 'new' removed too.
  # An OSError of something else (an input file) is not the output's: it propagates as is.
  with pytest.raises(FileNotFoundError):
    with outputs.staged_folder(str(tmp_path / 'other'), 'export'):
      open(str(tmp_path.parent / 'no_such_input.png'))
  assert os.listdir(tmp_path) == ['model']


def test_a_failed_rename_in_puts_the_old_output_back(tmp_path, monkeypatch):
  target = tmp_path / 'model'
  _export(target, {'old.bin': b'old'})
  before = _tree(target)
  real_rename = os.rename

  def rename(src, dst):
    if '.staging-' in os.fspath(src):
      raise OSError(errno.EIO, os.strerror(errno.EIO), src)
    real_rename(src, dst)

  monkeypatch.setattr(os, 'rename', rename)
  with pytest.raises(UserInputError, match=r'cannot write .*model: Input/output error'):
    _export(target, {'new.bin': b'new'})
  assert _tree(target) == before and os.listdir(tmp_path) == ['model']


@pytest.mark.parametrize('mask', [0o022, 0o077])
def test_new_folders_and_files_follow_the_umask(tmp_path, mask):
  old = os.umask(mask)
  try:
    _export(tmp_path / 'a' / 'model', {'f.bin': b'1'})
    outputs.write_json(str(tmp_path / 'b' / 'c.json'), {'x': 1}, 'compress')
  finally:
    os.umask(old)
  mode = lambda *p: stat.S_IMODE(os.stat(os.path.join(tmp_path, *p)).st_mode)
  assert mode('a') == mode('a', 'model') == mode('b') == 0o777 & ~mask
  assert mode('a', 'model', 'f.bin') == mode('b', 'c.json') == 0o666 & ~mask


def test_a_folder_that_is_not_writable_is_refused_before_any_work(tmp_path, monkeypatch):
  # The suite may run as root, whom a mode bit does not stop: os.access is what is consulted.
  monkeypatch.setattr(os, 'access', lambda path, mode: os.fspath(path) != str(tmp_path))
  with pytest.raises(UserInputError, match=rf'{tmp_path}/out/model: cannot write in {tmp_path} '
                                           r'\(permission denied or a read-only file system\)'):
    outputs.check_folder(str(tmp_path / 'out' / 'model'), 'predict')
  with pytest.raises(UserInputError, match=rf'c.json: cannot write in {tmp_path} '):
    outputs.check_file(str(tmp_path / 'c.json'), 'compress')
  assert not os.listdir(tmp_path)


def test_a_legacy_default_folder_is_known_by_its_result_file_only(tmp_path):
  folder = tmp_path / 'generate'
  folder.mkdir()
  (folder / 'generate.json').write_text('{}')
  _export(folder, {'generate.json': b'{"new": 1}'}, tool='generate', legacy='generate.json')
  assert (folder / 'generate.json').read_bytes() == b'{"new": 1}'
  with pytest.raises(UserInputError, match='is not a segae-generate output'):
    outputs.check_folder(str(_users_folder(tmp_path)), 'generate', legacy='generate.json')
  # A file the user added to an old output keeps it: the folder is refused, nothing removed.
  old = tmp_path / 'old' / 'generate'
  old.mkdir(parents=True)
  (old / 'generate.json').write_text('{}')
  (old / 'samples.png').write_bytes(b'png')
  outputs.check_folder(str(old), 'generate', legacy='generate.json')
  (old / 'notes.txt').write_text('mine')
  with pytest.raises(UserInputError, match='is not a segae-generate output'):
    outputs.check_folder(str(old), 'generate', legacy='generate.json')
  assert sorted(os.listdir(old)) == ['generate.json', 'notes.txt', 'samples.png']


# -------------------------------------------------------------------------------------- files --


def test_files_are_overwritten_only_when_the_tool_wrote_them(tmp_path):
  path = str(tmp_path / 'c.json')
  outputs.write_json(path, {'psnr': 1.0}, 'compress')
  assert json.load(open(path)) == {'psnr': 1.0, 'segae_output': {'tool': 'compress', 'format': 1}}
  outputs.write_json(path, {'psnr': 2.0}, 'compress')
  assert json.load(open(path))['psnr'] == 2.0 and os.listdir(tmp_path) == ['c.json']
  # The user's file, a JSON file of another tool, and a folder: refused, left as they were.
  (tmp_path / 'mine.json').write_bytes(KEEP)
  with pytest.raises(UserInputError, match=r'mine.json exists and is not a segae-compress output '
                                           r'\(no "segae_output" field naming it\)'):
    outputs.write_json(str(tmp_path / 'mine.json'), {'psnr': 1.0}, 'compress')
  with pytest.raises(UserInputError, match='is not a segae-evaluate output'):
    outputs.write_json(path, {}, 'evaluate')
  with pytest.raises(UserInputError, match=r'is a folder; expected a file name'):
    outputs.write_json(str(tmp_path), {}, 'compress')
  assert (tmp_path / 'mine.json').read_bytes() == KEEP and json.load(open(path))['psnr'] == 2.0
  # A file the tool owns by its place is overwritten whatever it holds.
  outputs.write_file(str(tmp_path / 'mine.json'), 'evaluate', b'{}', owned=True)
  assert (tmp_path / 'mine.json').read_bytes() == b'{}'
  assert sorted(os.listdir(tmp_path)) == ['c.json', 'mine.json']


def test_a_failed_file_write_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / 'eval_test.json'
  path.write_bytes(KEEP)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'replace', full)
  with pytest.raises(UserInputError, match=rf'^cannot write {path}: No space left on device '
                                           r'\(ENOSPC\); '):
    outputs.write_file(str(path), 'evaluate', b'{"new": 1}', owned=True)
  monkeypatch.undo()
  assert path.read_bytes() == KEEP and os.listdir(tmp_path) == ['eval_test.json']


def test_png_bytes_round_trip():
  import io
  image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(outputs.png_bytes(image)))),
                                image)
  gray = image[..., :1]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(outputs.png_bytes(gray)))),
                                gray[..., 0])


def test_a_reused_folder_must_be_new_empty_or_the_tools(tmp_path):
  assert outputs.check_reused_folder(str(tmp_path / 's'), 'sweep', 'sweep.json')
  folder = _users_folder(tmp_path)
  with pytest.raises(UserInputError, match=r'x exists and holds no sweep.json of a segae-sweep'):
    outputs.check_reused_folder(str(folder), 'sweep', 'sweep.json')
  (folder / 'sweep.json').write_text('{}')
  assert outputs.check_reused_folder(str(folder), 'sweep', 'sweep.json') == str(folder)


# --------------------------------------------------------------------------------- end to end --


def _no_restore(monkeypatch):
  """Makes restoring a model fail the test: the refusals must come before it."""
  from segae_jax.tools import common

  def restore(*args, **kwargs):
    raise AssertionError('the model was restored before the output was checked')

  monkeypatch.setattr(common, 'load_run', restore)


def test_export_refuses_a_users_folder_before_restoring_and_replaces_its_own(
    unet_scenes_run, tmp_path, monkeypatch):
  from segae_jax.tools import export
  workdir, _ = unet_scenes_run
  folder = _users_folder(tmp_path)
  with monkeypatch.context() as patched:
    _no_restore(patched)
    with pytest.raises(UserInputError, match=rf'^{folder} exists and is not a segae-export '):
      export.export_run(workdir, str(folder), 'latest')
    with pytest.raises(UserInputError, match=r'f/model: .* is a file, not a folder'):
      (tmp_path / 'f').write_bytes(KEEP)
      export.export_run(workdir, str(tmp_path / 'f' / 'model'), 'latest')
  assert _tree(folder) == {'notes.txt': KEEP} and (tmp_path / 'f').read_bytes() == KEEP
  model = tmp_path / 'model'
  export.export_run(workdir, str(model), 'latest')
  first = _tree(model)
  (model / 'model.json').write_text('{"format": 1, "changed": true}')  # Replaced whole next.
  export.export_run(workdir, str(model), 'latest')
  again = _tree(model)  # (The serialised function's bytes vary between exports.)
  assert sorted(again) == sorted(first) and again['model.json'] == first['model.json']
  assert sorted(os.listdir(tmp_path)) == ['f', 'model', 'x']
  assert json.load(open(model / outputs.MARKER)) == {'tool': 'export', 'format': 1}


def test_export_command_with_output_dot_keeps_the_current_directory(unet_scenes_run, tmp_path):
  """The issue's reproduction: `--output=.` emptied the current directory, then a traceback."""
  import subprocess
  import sys
  from conftest import cpu_env
  workdir, _ = unet_scenes_run
  here = _users_folder(tmp_path)
  for output in ('.', 'x'):
    cwd = here if output == '.' else tmp_path
    done = subprocess.run([sys.executable, '-m', 'segae_jax.tools.export', f'--workdir={workdir}',
                           f'--output={output}', '--checkpoint=latest'], cwd=cwd, env=cpu_env(1),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count('\n') == 1, done.stderr[-2000:]
    assert done.stderr.startswith('error: ') and ('current directory' in done.stderr
                                                  or 'is not a segae-export output' in done.stderr)
    assert _tree(here) == {'notes.txt': KEEP} and sorted(os.listdir(tmp_path)) == ['x']


def _images(folder, names, seed=0):
  folder.mkdir()
  rng = np.random.default_rng(seed)
  for name in names:
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / name)
  return folder


def test_predict_refuses_before_inference_and_replaces_only_its_own_output(
    unet_scenes_run, tmp_path, monkeypatch):
  from segae_jax.tools import predict
  workdir, _ = unet_scenes_run
  images = _images(tmp_path / 'images', ['a.png', 'b.png'])
  (tmp_path / 'file').write_bytes(KEEP)
  folder = _users_folder(tmp_path)
  with monkeypatch.context() as patched:
    _no_restore(patched)
    for output, message in ((folder, 'is not a segae-predict output'),
                            (tmp_path / 'file', 'is a file; expected a folder'),
                            (images, 'is not a segae-predict output')):
      with pytest.raises(UserInputError, match=message):
        predict.predict(workdir, str(images), str(output), 'latest')
    patched.setattr(os, 'access', lambda path, mode: os.fspath(path) != str(tmp_path))
    with pytest.raises(UserInputError, match=rf'cannot write in {tmp_path} \(permission denied'):
      predict.predict(workdir, str(images), str(tmp_path / 'out'), 'latest')
  out = tmp_path / 'out'
  predict.predict(workdir, str(images), str(out), 'latest')
  assert sorted(os.listdir(out)) == [outputs.MARKER, 'a_labels.png', 'a_overlay.png',
                                     'b_labels.png', 'b_overlay.png']
  # Its own previous output is replaced whole: b's files, not in this input, are gone.
  predict.predict(workdir, str(images / 'a.png'), str(out), 'latest')
  assert sorted(os.listdir(out)) == [outputs.MARKER, 'a_labels.png', 'a_overlay.png']
  assert _tree(folder) == {'notes.txt': KEEP} and (tmp_path / 'file').read_bytes() == KEEP
  assert sorted(os.listdir(tmp_path)) == ['file', 'images', 'out', 'x']


def test_predict_on_a_full_disk_is_one_line_and_keeps_the_previous_output(
    unet_scenes_run, tmp_path, monkeypatch):
  from segae_jax.tools import predict
  workdir, _ = unet_scenes_run
  images = _images(tmp_path / 'images', ['a.png', 'b.png'])
  out = tmp_path / 'out'  # The previous output: another a.png's pictures.
  predict.predict(workdir, str(_images(tmp_path / 'old', ['a.png'], seed=1)), str(out), 'latest')
  before = _tree(out)
  real_save, calls = Image.Image.save, []

  def save(self, fp, *args, **kwargs):
    calls.append(fp)
    if len(calls) == 3:  # b's label map, after a's two pictures are written.
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, fp, *args, **kwargs)

  monkeypatch.setattr(Image.Image, 'save', save)
  with pytest.raises(UserInputError, match=rf'^cannot write {out}: No space left on device '
                                           r'\(ENOSPC\); nothing there was changed$'):
    predict.predict(workdir, str(images), str(out), 'latest')
  assert _tree(out) == before and sorted(os.listdir(tmp_path)) == ['images', 'old', 'out']


def test_evaluate_on_a_workdir_it_cannot_write_stops_before_the_evaluation(
    unet_scenes_run, monkeypatch):
  from segae_jax.tools import evaluate
  workdir, _ = unet_scenes_run
  before = sorted(os.listdir(workdir))

  def evaluation(*args, **kwargs):
    raise AssertionError('evaluated before the workdir was checked')

  monkeypatch.setattr(evaluate, '_training_evaluation', evaluation)
  monkeypatch.setattr(evaluate, 'tiled_scores', evaluation)
  monkeypatch.setattr(os, 'access', lambda path, mode: os.fspath(path) != workdir)
  with pytest.raises(UserInputError, match=rf'eval_test.json: cannot write in {workdir} '
                                           r'\(permission denied or a read-only file system\)'):
    evaluate.evaluate_run(workdir, checkpoint='latest')
  assert sorted(os.listdir(workdir)) == before


def test_compress_and_sweep_refuse_what_they_did_not_write_before_any_work(tmp_path,
                                                                            monkeypatch):
  from conftest import ROOT
  from segae_jax.tools import compress, sweep
  _no_restore(monkeypatch)
  (tmp_path / 'mine.json').write_bytes(KEEP)
  with pytest.raises(UserInputError, match=r'mine.json exists and is not a segae-compress output'):
    compress.compress(str(tmp_path / 'run'), 8, str(tmp_path / 'mine.json'))
  folder = _users_folder(tmp_path)

  def validate(*args):
    raise AssertionError('the points were validated (and would train) before the workdir check')

  monkeypatch.setattr(sweep, '_validate_points', validate)
  with pytest.raises(UserInputError, match=r'x exists and holds no sweep.json of a segae-sweep'):
    sweep.run_sweep(os.path.join(ROOT, 'configs', 'default.py'), str(folder),
                    grid={'config.beta': [1.0]})
  assert _tree(folder) == {'notes.txt': KEEP} and (tmp_path / 'mine.json').read_bytes() == KEEP
