"""Every write is guarded: a full disk (ENOSPC), a folder made read-only (EACCES, EROFS) or
removed (ENOENT) at a write of a run is one line naming the file and the errno, leaves no
half-written file and no orbax temporary folder, and the run resumes from its last whole
checkpoint; after any kill and resume metrics.jsonl holds each step once.

Faults are injected into the real writes of this process (Faults): the tests run as root, where
a chmod stops nothing, and a full disk would need a mount. Run as a script, this file runs
train.py with a Faults installed (test_faults.py's subprocess runs):
  python tests/test_write_faults.py '{"name": "metrics.jsonl", "call": "write", "nth": 10,
                                      "code": "ENOSPC"}' train.py --config=...
"""
import builtins
import errno
import json
import logging
import os
import runpy
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

from segae_jax.errors import UserInputError
from segae_jax.training import checkpoints, writers

TMP_SUFFIX = '.orbax-checkpoint-tmp'


class Faults:
  """Makes this process's writes to files whose name starts with `name` fail with errno `code`
  (or kill the process with SIGKILL when `kill` is set):

  - call='open': opening the file for writing (a read-only or removed folder);
  - call='write': the `nth` and later writes, each after half its bytes reached the file (the
    disk filling mid-write; kill: the process dies mid-line);
  - call='rename': renaming it (orbax's temporary step folder into the step's name); with
    kill='after' the rename happens first.
  """

  def __init__(self, name, call='write', nth=1, code=None, kill=None):
    self.name, self.call, self.nth, self.kill = name, call, nth, kill
    self.code = getattr(errno, code) if isinstance(code, str) else code
    self.calls = 0
    self._fds = {}

  def _matches(self, path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.path.basename(
        os.fspath(path)).startswith(self.name)

  def _due(self) -> bool:
    self.calls += 1
    return self.calls >= self.nth

  def _fail(self, path):
    if self.kill:
      os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(self.code, os.strerror(self.code), os.fspath(path))

  def install(self, setattr):
    """Patches open, os.open, os.write, os.close, os.rename and os.replace through `setattr`
    (monkeypatch.setattr, or builtins.setattr in a script); returns self."""
    self._real = {'open': builtins.open, 'os_open': os.open, 'write': os.write,
                  'close': os.close, 'rename': os.rename, 'replace': os.replace}
    setattr(builtins, 'open', self._open)
    for attr, fake in (('open', self._os_open), ('write', self._os_write),
                       ('close', self._os_close), ('rename', self._renamer('rename')),
                       ('replace', self._renamer('replace'))):
      setattr(os, attr, fake)
    return self

  def _open(self, file, mode='r', *args, **kwargs):
    if not (any(c in mode for c in 'wax+') and self._matches(file)):
      return self._real['open'](file, mode, *args, **kwargs)
    if self.call == 'open' and self._due():
      self._fail(file)
    opened = self._real['open'](file, mode, *args, **kwargs)
    return _FaultyFile(opened, file, self) if self.call == 'write' else opened

  def _os_open(self, path, flags, *args, **kwargs):
    if not (flags & (os.O_WRONLY | os.O_RDWR) and self._matches(path)):
      return self._real['os_open'](path, flags, *args, **kwargs)
    if self.call == 'open' and self._due():
      self._fail(path)
    fd = self._real['os_open'](path, flags, *args, **kwargs)
    if self.call == 'write':
      self._fds[fd] = path
    return fd

  def _os_write(self, fd, data):
    if fd in self._fds and self._due():
      self._real['write'](fd, bytes(data)[:len(data) // 2])
      self._fail(self._fds[fd])
    return self._real['write'](fd, data)

  def _os_close(self, fd):
    self._fds.pop(fd, None)
    return self._real['close'](fd)

  def _renamer(self, name):
    def rename(src, dst, *args, **kwargs):
      if self.call == 'rename' and self._matches(src) and self._due():
        if self.kill == 'after':
          self._real[name](src, dst, *args, **kwargs)
        self._fail(dst)
      return self._real[name](src, dst, *args, **kwargs)
    return rename


class _FaultyFile:
  """A file object opened through Faults(call='write'): its writes fail when they are due."""

  def __init__(self, file, path, faults):
    self._file, self._path, self._faults = file, path, faults

  def write(self, data):
    if self._faults._due():
      self._file.write(data[:len(data) // 2])
      self._file.flush()
      self._faults._fail(self._path)
    return self._file.write(data)

  def __getattr__(self, name):
    return getattr(self._file, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return self._file.__exit__(*exc)


def leftovers(root):
  """Temporary files and orbax temporary folders anywhere under `root`."""
  found = []
  for folder, dirs, files in os.walk(root):
    found += [os.path.join(folder, n) for n in dirs + files if TMP_SUFFIX in n or '.tmp' in n]
  return found


def read_events(path):
  """The Event protos of a TensorBoard event file, each record's CRCs checked."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c
  data, events, at = open(path, 'rb').read(), [], 0
  while at < len(data):
    header = data[at:at + 8]
    (length,) = struct.unpack('<Q', header)
    assert struct.unpack('<I', data[at + 8:at + 12])[0] == masked_crc32c(header)
    body = data[at + 12:at + 12 + length]
    assert struct.unpack('<I', data[at + 12 + length:at + 16 + length])[0] == masked_crc32c(body)
    events.append(event_pb2.Event.FromString(body))
    at += 16 + length
  return events


# ----------------------------------------------------------------------------- the writers


def test_tensorstore_and_os_errors_are_recognised_as_failed_writes():
  # As a full disk reached orbax's array writes (tensorstore reports the errno as text).
  full = ValueError('RESOURCE_EXHAUSTED: Error writing "train_state.opt_state.0.count/0" in OCDBT '
                    'database at local file "/r/checkpoints/4.orbax-checkpoint-tmp/state": Failed '
                    "to write 81717 bytes to file 14: No space left on device [os_error_code='28']")
  assert writers.write_errno(full) == errno.ENOSPC
  wrapped = RuntimeError('save failed')
  wrapped.__cause__ = PermissionError(errno.EACCES, 'Permission denied')
  assert writers.write_errno(wrapped) == errno.EACCES
  assert writers.write_errno(OSError(errno.EROFS, 'Read-only file system')) == errno.EROFS
  assert writers.write_errno(ValueError('shape mismatch')) is None  # A bug keeps its traceback.
  assert writers.write_errno(OSError(errno.EBADF, 'Bad file descriptor')) is None


@pytest.mark.parametrize('code', ['ENOSPC', 'EACCES', 'EROFS'])
def test_a_failed_json_write_is_one_line_and_keeps_the_old_file(code, tmp_path, monkeypatch):
  path = str(tmp_path / 'results.json')
  writers.write_json(path, {'old': 1})
  call = 'write' if code == 'ENOSPC' else 'open'
  Faults('results.json', call, code=code).install(monkeypatch.setattr)
  with pytest.raises(writers.WriteFailed) as error:
    writers.write_json(path, {'new': 2})
  monkeypatch.undo()
  assert str(error.value) == f'cannot write {path}: {os.strerror(getattr(errno, code))} ({code})'
  assert isinstance(error.value, UserInputError) and error.value.errno == getattr(errno, code)
  assert json.load(open(path)) == {'old': 1} and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into a read-only folder')
def test_a_real_read_only_folder_is_one_line(tmp_path):
  folder = tmp_path / 'run'
  folder.mkdir()
  writers.write_json(str(folder / 'results.json'), {'old': 1})
  folder.chmod(0o555)
  try:
    with pytest.raises(writers.WriteFailed, match=r'results\.json: Permission denied \(EACCES\)$'):
      writers.write_json(str(folder / 'results.json'), {'new': 2})
  finally:
    folder.chmod(0o755)
  assert os.listdir(folder) == ['results.json']


def test_a_failed_png_leaves_no_temporary_file(tmp_path, monkeypatch):
  Faults('samples.png', 'write', code='ENOSPC').install(monkeypatch.setattr)
  with pytest.raises(writers.WriteFailed, match=r'cannot write .*samples\.png: No space left'):
    writers.save_png(str(tmp_path / 'samples.png'), np.zeros((8, 8, 3), np.uint8))
  monkeypatch.undo()
  assert os.listdir(tmp_path) == []


def test_a_failed_metrics_line_is_cut_back_whole(tmp_path, monkeypatch):
  path = str(tmp_path / 'metrics.jsonl')
  faults = Faults('metrics.jsonl', 'write', nth=3, code='ENOSPC').install(monkeypatch.setattr)
  lines = writers.JsonLines(path)
  lines.write({'step': 1, 'loss': 2.0})
  lines.write({'step': 2, 'loss': 1.5})
  with pytest.raises(writers.WriteFailed, match=r'metrics\.jsonl: No space left on device '
                                                r'\(ENOSPC\)$'):
    lines.write({'step': 3, 'loss': 1.0})
  lines.close()
  monkeypatch.undo()
  assert faults.calls == 3  # The third write failed after half its bytes reached the file.
  assert open(path).read() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'


def test_a_metrics_file_removed_during_the_run_fails_instead_of_writing_on(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  lines = writers.JsonLines(path)
  lines.write({'step': 1})
  os.remove(path)  # The folder cleaned up under a running run.
  with pytest.raises(writers.WriteFailed, match=r'No such file or directory \(ENOENT\)'):
    lines.write({'step': 2})
  lines.close()


def test_a_resumed_metrics_file_keeps_each_step_once(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "train/loss": 3.0}\n{"step": 2, "train/loss": 2.0}\n'
                  '{"step": 2, "test/loss": 2.5}\n{"step": 3, "train/loss": 1.0}\n'
                  '{"step": 4, "tr')  # Steps 3 and 4 were after the checkpoint; 4 was cut.
  lines = writers.JsonLines(str(path), keep_through_step=2)
  lines.write({'step': 3, 'train/loss': 1.1})
  lines.close()
  assert [json.loads(l) for l in open(path)] == [
      {'step': 1, 'train/loss': 3.0}, {'step': 2, 'train/loss': 2.0},
      {'step': 2, 'test/loss': 2.5}, {'step': 3, 'train/loss': 1.1}]
  assert leftovers(tmp_path) == []
  fresh = writers.JsonLines(str(path), keep_through_step=0)  # No checkpoint: nothing kept.
  fresh.close()
  assert path.read_text() == ''


def test_event_files_are_written_in_the_calling_thread_and_purge_resumed_steps(tmp_path,
                                                                             monkeypatch):
  writer = writers.MetricWriter(str(tmp_path), resumed_step=4)
  writer.write_scalars(5, {'train/loss': 1.5})
  writer.write_image(5, 'samples', np.full((4, 4, 3), 7, np.uint8))
  writer.close()
  (name,) = os.listdir(tmp_path / 'tensorboard')
  events = read_events(tmp_path / 'tensorboard' / name)
  assert events[0].file_version == 'brain.Event:2'
  assert events[1].step == 5 and events[1].session_log.status == 1  # START: TensorBoard hides
  # the earlier files' steps >= 5, which this resumed run trains again.
  assert (events[2].step, events[2].summary.value[0].tag) == (5, 'train/loss')
  assert abs(events[2].summary.value[0].simple_value - 1.5) < 1e-6
  assert events[3].summary.value[0].image.height == 4
  (tmp_path / 'b').mkdir()
  # The first write (the file's version record) goes through, the next fails.
  Faults('events.out.tfevents', 'write', nth=2, code='ENOSPC').install(monkeypatch.setattr)
  writer = writers.MetricWriter(str(tmp_path / 'b'))
  with pytest.raises(writers.WriteFailed, match=r'tensorboard/events\.out\.tfevents\.\S+: No '
                                                r'space left on device \(ENOSPC\)$'):
    writer.write_scalars(1, {'train/loss': 1.0})
  writer.close()
  monkeypatch.undo()
  (name,) = os.listdir(tmp_path / 'b' / 'tensorboard')
  assert len(read_events(tmp_path / 'b' / 'tensorboard' / name)) == 1  # The half record cut.


# ----------------------------------------------------------------------------- checkpoints


def _tree(value):
  return {'a': np.full((64,), value, np.float32), 'b': np.arange(3)}


def _save(ckpt, step):
  ckpt.save(step, _tree(step), {'position': step}, {'model': 'x'})


@pytest.mark.parametrize('code', ['ENOSPC', 'EACCES'])
def test_a_failed_checkpoint_is_one_error_without_its_temporary_folder(code, tmp_path,
                                                                      monkeypatch, caplog):
  directory = str(tmp_path / 'checkpoints')
  ckpt = checkpoints.Checkpointer(directory)
  _save(ckpt, 1)
  ckpt.wait_until_finished()
  # Orbax renames the step's temporary folder in its background thread: the error surfaces at
  # the next save or at the wait.
  Faults(f'2{TMP_SUFFIX}', 'rename', code=code).install(monkeypatch.setattr)
  _save(ckpt, 2)
  with pytest.raises(writers.WriteFailed) as error:
    ckpt.wait_until_finished()
  ckpt.close()  # Quiet: the failure was reported once.
  monkeypatch.undo()
  assert str(error.value) == (f'cannot write {directory}/2: {os.strerror(getattr(errno, code))} '
                              f'({code})')
  assert sorted(os.listdir(directory)) == ['1']  # Step 1 whole, step 2's temporary removed.
  # orbax's own error logs (a traceback from each thread the failure passed) dropped.
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
  assert checkpoints.Checkpointer(directory).all_steps() == [1]


# A file size limit makes tensorstore's own array writes fail for real (EFBIG, reported as text
# in a ValueError, as a full disk is); the limit is the process's, hence a subprocess.
_SIZE_LIMITED_SAVES = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50000, 50000))
import numpy as np
from segae_jax.training import checkpoints, writers
tree = {f'a{i}': np.random.default_rng(i).random(30000 if i % 2 else 10).astype(np.float32)
        for i in range(40)}
for directory in sys.argv[1:]:  # Twice: the stray reports below come in about 3 saves of 4.
  ckpt = checkpoints.Checkpointer(directory)
  try:
    ckpt.save(1, tree, {'position': 1}, {'model': 'x'})
    ckpt.wait_until_finished()
  except writers.WriteFailed as e:
    print(f'error: {e}', file=sys.stderr)
  ckpt.close()
"""


def test_a_real_failed_array_write_is_one_line_without_stray_reports(tmp_path):
  """The save's other writes, still running when the first failed, finish after orbax closed
  the event loop awaiting them: tensorstore reported each as 'RuntimeError: Event loop is
  closed' (dozens of tracebacks), and could recreate the temporary folder once removed."""
  from conftest import ROOT, cpu_env
  directories = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  proc = subprocess.run([sys.executable, '-c', _SIZE_LIMITED_SAVES, *directories], cwd=ROOT,
                        env=cpu_env(1), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = [f'error: cannot write {d}/1: File too large (EFBIG)' for d in directories]
  assert proc.stderr.splitlines() == expected, proc.stderr[-3000:]
  assert leftovers(tmp_path) == [] and os.listdir(directories[0]) == []


def test_a_symlinked_checkpoint_due_for_pruning_is_kept(tmp_path, caplog):
  directory, elsewhere = str(tmp_path / 'checkpoints'), str(tmp_path / 'mine')
  ckpt = checkpoints.Checkpointer(directory, max_to_keep=1)
  _save(ckpt, 1)
  ckpt.close()
  os.rename(os.path.join(directory, '1'), elsewhere)  # The user's step, linked in.
  os.symlink(elsewhere, os.path.join(directory, '1'))
  caplog.set_level(logging.WARNING, logger='segae_jax')
  ckpt = checkpoints.Checkpointer(directory, max_to_keep=1)
  for step in (2, 3, 4):
    _save(ckpt, step)
  ckpt.close()
  assert sorted(os.listdir(directory)) == ['1', '4']  # 2 and 3 pruned, the link kept.
  assert os.path.islink(os.path.join(directory, '1')) and os.listdir(elsewhere)
  warnings = [r.getMessage() for r in caplog.records if 'symbolic link' in r.getMessage()]
  assert len(warnings) == 1 and 'step 1' in warnings[0]  # Once, not at every save.


# ----------------------------------------------------------------------------- a training run


@pytest.mark.faults  # Two trainings: about 20 s.
def test_a_full_disk_at_the_last_checkpoint_is_one_line_and_the_run_resumes(tmp_path, tfds_dir,
                                                                           monkeypatch):
  from conftest import small_config
  from segae_jax import training
  config = small_config(tfds_dir, **{  # 6 steps, checkpoints at 3 and 6; a tiny VAE.
      'model.features': (8, 16), 'model.hidden_dim': 32, 'model.latent_dim': 4,
      'data.binarize': False, 'num_pictures': 2, 'eval_batch_size': 2000})
  workdir = str(tmp_path / 'run')
  Faults(f'6{TMP_SUFFIX}', 'rename', code='ENOSPC').install(monkeypatch.setattr)
  with pytest.raises(UserInputError) as error:
    training.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert str(error.value) == (
      f'cannot write {workdir}/checkpoints/6: No space left on device (ENOSPC); free space and '
      're-run the same command to resume from step 3')
  # The run stopped before its results: nothing says it ended, nothing half-written is left.
  assert not os.path.exists(os.path.join(workdir, 'results.json')) and not leftovers(workdir)
  results = training.train_and_evaluate(config, workdir)
  assert (results['resumed_from_step'], results['step']) == (3, 6)
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in records if 'train/learning_rate' in r] == [2, 4, 6]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


if __name__ == '__main__':  # python tests/test_write_faults.py SPEC train.py ARGS...
  Faults(**json.loads(sys.argv[1])).install(setattr)
  sys.argv = sys.argv[2:]
  runpy.run_path(sys.argv[0], run_name='__main__')
