"""Run outputs: metrics.jsonl, TensorBoard event files (tensorboardX's protos, no TensorFlow
needed), PNGs, JSON.

Only process 0 writes; other processes get a writer that does nothing, so callers need no checks.
Every write is guarded: a full disk, a folder made read-only or removed during the run raises
WriteFailed (a UserInputError: one line naming the file and the errno), and no half-written file
is left behind (whole files go through a temporary file and a rename; appended lines and event
records are cut back off when they fail).
"""
import contextlib
import errno
import json
import os
import re
import socket
import struct
import time
from typing import Iterator, List, Mapping, Optional

import numpy as np
from etils import epath
from PIL import Image

from segae_jax.errors import UserInputError
from segae_jax.training import paths

# What a write meets when the disk is full, the folder read-only or gone: the user can fix these
# and re-run. Other errors are bugs and keep their tracebacks.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM,
                          errno.EROFS, errno.ENOENT, errno.ENOTDIR})
# tensorstore (orbax's array writes) reports a failed system call as text, not as an OSError.
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")


class WriteFailed(UserInputError):
  """`path` could not be written; `errno` says why (ENOSPC, EACCES, EROFS, ENOENT, ...). The
  message is one line: 'cannot write PATH: No space left on device (ENOSPC)'."""

  def __init__(self, path: str, code: int, hint: str = ''):
    self.path, self.errno = str(path), code
    super().__init__(f'cannot write {path}: {os.strerror(code)} '
                     f'({errno.errorcode.get(code, code)})' + (f'; {hint}' if hint else ''))

  def with_hint(self, hint: str) -> 'WriteFailed':
    """The same failure, its message ending '; <hint>' (what to do next)."""
    return WriteFailed(self.path, self.errno, hint)

  def remedy(self) -> str:
    """What the user does before re-running: 'free space', 'make ... writable', ..."""
    if self.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      return 'free space'
    if self.errno in (errno.ENOENT, errno.ENOTDIR):
      return 'restore the folder (it was removed or replaced during the run)'
    return f'make {os.path.dirname(self.path) or self.path} writable'


def write_errno(error: BaseException) -> Optional[int]:
  """The errno of a failed write in `error` or the errors it was raised from (an OSError, or
  tensorstore's text "[os_error_code='28']"), if it is one of WRITE_ERRNOS; else None."""
  seen = 0
  while error is not None and seen < 8:
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
      return error.errno
    match = _TENSORSTORE_ERRNO.search(str(error))
    if match and int(match.group(1)) in WRITE_ERRNOS:
      return int(match.group(1))
    error, seen = error.__cause__ or error.__context__, seen + 1
  return None


@contextlib.contextmanager
def guarded(path: str) -> Iterator[None]:
  """Turns a failed write (write_errno) inside the block into WriteFailed naming `path`; other
  errors pass unchanged."""
  try:
    yield
  except WriteFailed:
    raise
  except Exception as e:  # noqa: BLE001 -- only write failures are turned; the rest re-raised.
    code = write_errno(e)
    if code is None:
      raise
    raise WriteFailed(path, code) from e


def remove_quietly(path: str) -> None:
  """Removes the file `path` (local or a URL) if it is there; failing to remove it is not the
  error to report (the write's own failure is)."""
  with contextlib.suppress(OSError):
    epath.Path(path).unlink(missing_ok=True)


class LocalAppender:
  """Appends byte strings to a local file (created with the umask's mode), each whole or not at
  all: a write that fails is cut back off, so no half line or record is left; a file removed
  while the run holds it open fails (ENOENT) instead of taking writes nobody will see.

  Raises:
    WriteFailed: opening or a write failed (WRITE_ERRNOS).
  """

  def __init__(self, path: str):
    self.path = path
    with guarded(path):
      self._fd: Optional[int] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

  def write(self, data: bytes) -> None:
    with guarded(self.path):
      before = os.fstat(self._fd)
      if before.st_nlink == 0:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
      try:
        view = memoryview(data)
        while view:
          view = view[os.write(self._fd, view):]
      except OSError:
        with contextlib.suppress(OSError):
          os.ftruncate(self._fd, before.st_size)
        raise

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def kept_lines(text: str, last_step: int) -> List[str]:
  """The lines of a metrics.jsonl text that a run resumed at `last_step` keeps: whole JSON
  records (ending in a newline; a line cut by a killed process is dropped) of steps <= last_step
  (later ones are from steps the resumed run trains again and would write twice)."""
  kept = []
  for line in text.splitlines(True):
    if not line.endswith('\n'):
      continue
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and isinstance(record.get('step'), int) and (
        record['step'] <= last_step):
      kept.append(line)
  return kept


class JsonLines:
  """Appends JSON records, one per line, to `path` (a local file or a URL).

  With `keep_through_step` (a resumed run's restored step; 0 for a fresh start) the file is first
  cut to the records of steps up to it (kept_lines), rewritten atomically, so that after any kill
  and resume each step's record appears once. Object stores have no append, so there the file is
  rewritten whole at each record (its earlier lines are read once, at opening).

  Raises:
    WriteFailed: opening, the rewrite or a write failed; the file then holds whole lines only.
  """

  def __init__(self, path: str, keep_through_step: Optional[int] = None):
    self.path = path
    self._file: Optional[LocalAppender] = None
    self._lines: Optional[List[str]] = None
    text = ''
    if keep_through_step is not None or paths.is_url(path):
      with guarded(path):
        text = paths.read_text(path) if paths.exists(path) else ''
    lines = text.splitlines(True)
    if keep_through_step is not None:
      lines = kept_lines(text, keep_through_step)
      if ''.join(lines) != text:
        write_text(path, ''.join(lines))
    if paths.is_url(path):
      self._lines = lines
    else:
      self._file = LocalAppender(path)

  def write(self, record: Mapping) -> None:
    line = json.dumps(record) + '\n'
    if self._file is not None:
      self._file.write(line.encode())
      return
    write_text(self.path, ''.join(self._lines + [line]))
    self._lines.append(line)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


class EventFile:
  """One TensorBoard event file in `logdir`, written in the calling thread. (tensorboardX's
  SummaryWriter writes from a thread of its own: a failed write there is a traceback on stderr
  and then a hang once its queue is full.) With `purge_step`, TensorBoard hides the events of
  that step and later ones from earlier files: a resumed run's steps trained again.

  Raises:
    WriteFailed: creating the folder or file, or a write, failed.
  """

  def __init__(self, logdir: str, purge_step: Optional[int] = None):
    from tensorboardX import record_writer
    from tensorboardX.proto import event_pb2
    self._event_pb2, self._crc = event_pb2, record_writer.masked_crc32c
    self.path = paths.join(logdir, f'events.out.tfevents.{int(time.time())}.'
                                   f'{socket.gethostname()}')
    with guarded(self.path):
      if paths.is_url(logdir):  # tensorboardX's own gs:// and s3:// writers.
        record_writer.directory_check(logdir)
        self._file = record_writer.open_file(self.path)
      else:
        os.makedirs(logdir, exist_ok=True)
        self._file = LocalAppender(self.path)
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
    if purge_step is not None:
      self._write(event_pb2.Event(wall_time=time.time(), step=purge_step,
                                  session_log=event_pb2.SessionLog(
                                      status=event_pb2.SessionLog.START)))

  def add(self, summary, step: int) -> None:
    """Writes a tensorboardX Summary proto (tensorboardX.summary.scalar, .image) at `step`
    (to a local file at once; at a URL, held until `flush`)."""
    self._write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    """Uploads what a URL's writer holds (tensorboardX's writers rewrite the whole object);
    local records are already written."""
    if not isinstance(self._file, LocalAppender):
      with guarded(self.path):
        self._file.flush()

  def _write(self, event) -> None:
    data = event.SerializeToString()  # A TFRecord: length, its CRC, data, its CRC.
    header = struct.pack('<Q', len(data))
    record = b''.join([header, struct.pack('<I', self._crc(header)), data,
                       struct.pack('<I', self._crc(data))])
    with guarded(self.path):
      self._file.write(record)

  def close(self) -> None:
    with guarded(self.path):
      self._file.close()


class MetricWriter:
  """Appends one JSON line per `write_scalars` call to `<workdir>/metrics.jsonl` and mirrors the
  scalars and images to TensorBoard under `<workdir>/tensorboard` (`workdir` a local folder or
  a URL). `resumed_step`: the step a run resumed from (0 for a fresh start): metrics.jsonl keeps
  the records up to it only (JsonLines) and TensorBoard hides the earlier files' later steps;
  None keeps everything (a reader appending to a finished run's file).

  Raises:
    WriteFailed: any write (see JsonLines, EventFile).
  """

  def __init__(self, workdir: str, enabled: bool = True, resumed_step: Optional[int] = None):
    self.enabled = enabled
    self._jsonl: Optional[JsonLines] = None
    self._events: Optional[EventFile] = None
    if enabled:
      self._jsonl = JsonLines(paths.join(workdir, 'metrics.jsonl'), resumed_step)
      self._events = EventFile(paths.join(workdir, 'tensorboard'),
                               purge_step=resumed_step + 1 if resumed_step else None)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    from tensorboardX import summary
    self._jsonl.write({'step': int(step), **{k: float(v) for k, v in scalars.items()}})
    for k, v in scalars.items():
      self._events.add(summary.scalar(k, float(v)), int(step))
    self._events.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [height, width, channels]."""
    if self.enabled:
      from tensorboardX import summary
      self._events.add(summary.image(name, image, dataformats='HWC'), int(step))
      self._events.flush()

  def close(self) -> None:
    """Closes both files (the second also when the first fails)."""
    if self.enabled:
      try:
        self._jsonl.close()
      finally:
        self._events.close()


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` (a local file or a URL) atomically: a temporary file beside it,
  then a rename, so readers never see a half-written file; a failed write leaves the old file
  (if any) and no temporary one.

  Raises:
    WriteFailed: the write or the rename failed.
  """
  _atomic(path, path + '.tmp', 'w', lambda f: f.write(text))


def write_bytes(path: str, data: bytes) -> None:
  """write_text of bytes: `data` to `path` (a local file or a URL) through a temporary file and a
  rename.

  Raises:
    WriteFailed: the write or the rename failed.
  """
  _atomic(path, path + '.tmp', 'wb', lambda f: f.write(data))


def write_json(path: str, obj: Mapping, sort_keys: bool = True) -> None:
  """Writes JSON atomically (write_text). Keys are sorted unless `sort_keys` is False (where
  their order means something). `path`: a local file or a URL.

  Raises:
    WriteFailed: see write_text.
  """
  write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + '\n')


def _atomic(path: str, tmp: str, mode: str, write) -> None:
  with guarded(path):
    try:
      with paths.open_file(tmp, mode) as f:
        write(f)
      paths.replace(tmp, path)
    except BaseException:
      remove_quietly(tmp)
      raise


def image_grid(images: np.ndarray, num_columns: int, padding: int = 2) -> np.ndarray:
  """Tiles float images [n, h, w, c] in [0, 1] into one uint8 [rows*(h+p)+p, cols*(w+p)+p, c]
  picture (row-major, white padding). Grayscale stays one channel."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  rows = -(-n // num_columns)
  grid = np.ones((rows * (h + padding) + padding, num_columns * (w + padding) + padding, c),
                 np.float32)
  for i in range(n):
    r, col = divmod(i, num_columns)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = images[i]
  return np.round(grid * 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
  """Saves uint8 [h, w, 1 or 3] as PNG (a local file or a URL) through a temporary file (no
  half-written pictures; a failed save leaves no temporary file).

  Raises:
    WriteFailed: the write or the rename failed.
  """
  img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  _atomic(path, path + '.tmp.png', 'wb', lambda f: img.save(f, format='PNG'))
