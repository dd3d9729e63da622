"""How every research command writes: no command deletes or overwrites what it did not write.

Output folders (export, predict, generate, unsupervised, detect, probe): the tool writes into a
staging folder beside the target (same parent, `.<name>.staging-<pid>-<hex>`), leaves its marker
MARKER = `.segae_output.json` ({"tool": "export", "format": 1}) in it, and renames it into place.
An existing target is taken only when it is
  - a previous output of the same tool (its marker names the tool), which is replaced: renamed
    aside, the new folder renamed in, then the old one removed, so a failure at any point leaves
    the old output whole;
  - an empty folder, which the new output takes the place of (its mode then follows the umask);
  - at the tool's default place in a run's workdir, a folder of an earlier version (no marker)
    holding the tool's result file (`legacy`, e.g. generate.json) and nothing but that and PNG
    pictures.
Anything else (a folder of the user's, the current directory or a folder holding it, a plain
file, a symlink, another tool's output) is refused with one line naming the path, by
check_folder, which the tools call before restoring the model.

Output files in a folder the tool does not own as a whole (compress --output, evaluate's files in
the run's workdir, a sweep's tables): written to a temporary file beside the target
(`.<name>.tmp-<pid>-<hex>`) and renamed. An existing file is overwritten only when it is the
tool's own: a JSON file whose FIELD ('segae_output') names the tool (write_json adds it), or a
file the caller declares the tool's by its place (`owned`: eval_<split>.json in the run's
workdir, compress.json there by default, a sweep's results in the folder its sweep.json marks).

Writability is checked up front (check_folder, check_file); an OSError while writing (EACCES,
EROFS, ENOSPC, a vanished folder), or training.writers' WriteFailed on a file in the staging
folder, becomes one WriteFailed (a UserInputError) naming the target and the errno text, with the
staging folder or temporary file removed. New folders are created with mode 0o777 and
files with 0o666, so the umask alone decides their modes, as for any file the user creates.
"""
import contextlib
import io
import json
import os
import secrets
import shutil
from typing import Iterator, List, Mapping, Optional

import numpy as np

from segae_jax.errors import UserInputError

MARKER = '.segae_output.json'  # In an output folder: {"tool": ..., "format": FORMAT}.
FIELD = 'segae_output'  # In an output JSON file written by write_json: the same dict.
FORMAT = 1


def _command(tool: str) -> str:
  return f'segae-{tool}'


def _stamp(tool: str) -> dict:
  return {'tool': tool, 'format': FORMAT}


def _unique(parent: str, name: str, kind: str, create) -> str:
  """create(path) on a fresh hidden name beside `name` in `parent`; returns the path. A name
  taken by someone else (FileExistsError) is never touched: another one is drawn."""
  for _ in range(100):
    path = os.path.join(parent, f'.{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}')
    try:
      create(path)
      return path
    except FileExistsError:
      continue
  raise FileExistsError(f'no free name for a {kind} file in {parent}')


def _marker_tool(folder: str) -> Optional[str]:
  """The tool named by `folder`'s marker; None without one, '?' for an unreadable one."""
  path = os.path.join(folder, MARKER)
  if not os.path.lexists(path):
    return None
  try:
    with open(path) as f:
      stamp = json.load(f)
    return str(stamp['tool'])
  except (OSError, ValueError, KeyError, TypeError):
    return '?'


def _refuse_current_directory(target: str, path: str) -> None:
  """A folder holding the process's working directory is never replaced (nor `.` emptied)."""
  try:
    cwd = os.path.realpath(os.getcwd())
  except OSError:  # The working directory vanished: nothing to protect.
    return
  real = os.path.realpath(target)
  if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
    raise UserInputError(f'{path}: the current directory or a folder holding it; expected a new '
                         'folder for the output')


def _check_existing_folder(target: str, tool: str, legacy: Optional[str]) -> None:
  """Raises UserInputError unless the existing `target` is the tool's to replace."""
  if os.path.islink(target):
    raise UserInputError(f'{target} is a symbolic link; expected a new folder or a previous '
                         f'{_command(tool)} output')
  if not os.path.isdir(target):
    raise UserInputError(f'{target} is a file; expected a folder for the {_command(tool)} '
                         'output (give a new name)')
  owner = _marker_tool(target)
  if owner == tool:
    return
  if owner is not None:
    raise UserInputError(f'{target} holds a {_command(owner)} output (its {MARKER}), not '
                         f'{_command(tool)}\'s; give another --output')
  try:
    entries = os.listdir(target)
  except OSError as e:
    raise UserInputError(f'{target}: cannot list the folder ({e.strerror})') from None
  if entries and not _is_legacy_output(target, entries, legacy):
    raise UserInputError(f'{target} exists and is not a {_command(tool)} output (no {MARKER}); '
                         'give a new or empty folder')


def _is_legacy_output(target: str, entries: List[str], legacy: Optional[str]) -> bool:
  """Whether a folder without a marker is a tool's output from before markers, which is replaced
  whole: it holds the tool's result file `legacy`, and nothing the tools of then did not write
  (their result JSON and PNG pictures, plain files only), so a file or folder the user added
  keeps the whole folder from being replaced."""
  if not legacy or legacy not in entries:
    return False
  for name in entries:
    path = os.path.join(target, name)
    if (name != legacy and not name.endswith('.png')) or os.path.islink(path) or (
        not os.path.isfile(path)):
      return False
  return True


def _check_parent_writable(target: str) -> None:
  """The nearest existing folder above `target` (where the missing ones will be created) must be a
  folder this process may write in."""
  ancestor = os.path.dirname(target)
  while not os.path.lexists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise UserInputError(f'{target}: {ancestor} is a file, not a folder')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise UserInputError(f'{target}: cannot write in {ancestor} (permission denied or a '
                         'read-only file system)')


def check_folder(path: str, tool: str, legacy: Optional[str] = None) -> str:
  """Checks that the output folder `path` may be written by `tool` (see the module doc) and
  returns it absolute. Nothing is written. `legacy`: the name of the tool's result file, given
  only for the tool's default folder inside a run's workdir.

  Raises:
    UserInputError: `path` is empty, the current directory or a folder holding it, a file, a
      symlink, a folder the tool did not write (or another tool's), or not writable.
  """
  if not path:
    raise UserInputError(f'--output is empty; expected a folder for the {_command(tool)} output')
  target = os.path.abspath(os.path.expanduser(path))
  _refuse_current_directory(target, path)
  if os.path.lexists(target):
    _check_existing_folder(target, tool, legacy)
  _check_parent_writable(target)
  return target


def _make_parents(folder: str) -> List[str]:
  """Creates the missing folders down to `folder`; returns those created, top first."""
  missing = []
  while not os.path.lexists(folder):
    missing.append(folder)
    folder = os.path.dirname(folder)
  for path in reversed(missing):
    os.mkdir(path, 0o777)
  return missing[::-1]


def _remove_created(created: List[str]) -> None:
  for path in reversed(created):
    try:
      os.rmdir(path)
    except OSError:  # No longer empty: someone else's now.
      return


def _write_error(target: str, code: int, where, staging: Optional[str]) -> UserInputError:
  """The one line (training.writers.WriteFailed, the project's failed-write error) for a write
  of `target` that failed with errno `code` at the path `where` (None: a failed write())."""
  from segae_jax.training import writers
  if where and staging and os.fspath(where).startswith(staging + os.sep):
    where = os.path.relpath(where, staging)
  at = f'at {where}; ' if where and os.fspath(where) != target else ''
  return writers.WriteFailed(target, code, f'{at}nothing there was changed')


def _is_ours(where, target: str) -> bool:
  """Whether a failed write at the path `where` was the output's: no path (a failed write() or
  close()), the target, its staging or set-aside folder, or a folder above it."""
  if where is None:
    return True
  path = os.path.abspath(os.fspath(where))
  hidden = os.path.join(os.path.dirname(target), f'.{os.path.basename(target)}.')
  return (path.startswith(hidden) or path == target or path.startswith(target + os.sep)
          or target.startswith(path.rstrip(os.sep) + os.sep))


def _publish(staging: str, target: str, tool: str, legacy: Optional[str]) -> None:
  """Renames `staging` to `target`; an existing target (checked again now) is renamed aside
  first, put back if the rename in fails, and removed once the new output is in place."""
  if not os.path.lexists(target):
    os.rename(staging, target)
    return
  _check_existing_folder(target, tool, legacy)
  name = os.path.basename(target)
  aside = _unique(os.path.dirname(target), name, 'old', lambda p: os.mkdir(p, 0o700))
  os.rename(target, aside)  # Onto the empty folder just made for it.
  try:
    os.rename(staging, target)
  except OSError:
    os.rename(aside, target)
    raise
  shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(path: str, tool: str, legacy: Optional[str] = None) -> Iterator[str]:
  """Yields a new empty staging folder to write `tool`'s output into; on leaving the block
  without an error, writes the marker and renames it to `path` (see the module doc). On an
  error the staging folder (and any parent folder made for it) is removed and `path` is left as
  it was.

  Raises:
    UserInputError: what check_folder raises.
    training.writers.WriteFailed (a UserInputError): an OSError of the writing (EACCES, EROFS,
      ENOSPC, ENOENT of a vanished folder) or writers' own WriteFailed on a file in the staging
      folder, as one line naming `path` and the errno text. Other errors of the block (an
      input's OSError included) propagate unchanged.
  """
  from segae_jax.training import writers
  target = check_folder(path, tool, legacy)
  created, staging = [], None
  done = False
  try:
    created = _make_parents(os.path.dirname(target))
    staging = _unique(os.path.dirname(target), os.path.basename(target), 'staging',
                      lambda p: os.mkdir(p, 0o777))
    yield staging
    with open(os.path.join(staging, MARKER), 'w') as f:
      json.dump(_stamp(tool), f)
    _publish(staging, target, tool, legacy)
    done = True
  except writers.WriteFailed as e:  # training.writers' own guard, on a file in the staging folder.
    if not _is_ours(e.path, target):
      raise
    raise _write_error(target, e.errno, e.path, staging) from e
  except OSError as e:  # errno None: not a failed system call (e.g. PIL's own), a bug.
    if e.errno is None or not _is_ours(e.filename, target):
      raise
    raise _write_error(target, e.errno, e.filename, staging) from e
  finally:
    if staging and os.path.lexists(staging):
      shutil.rmtree(staging, ignore_errors=True)
    if not done:
      _remove_created(created)


# ---------------------------------------------------------------------------------- files --


def _json_tool(path: str) -> Optional[str]:
  """The tool named by a JSON file's FIELD, or None (not JSON, no field, unreadable)."""
  try:
    with open(path) as f:
      stamp = json.load(f)[FIELD]
    return str(stamp['tool'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def check_file(path: str, tool: str, owned: bool = False) -> str:
  """Checks that `tool` may write the file `path` and returns it absolute (a URL as given:
  object stores are not checked). Nothing is written. `owned`: the file is the tool's by its
  place (see the module doc), so an existing one is overwritten whatever it holds.

  Raises:
    UserInputError: `path` is a folder or a symlink, an existing file the tool did not write, or
      its folder is not writable.
  """
  from segae_jax.training import paths
  if paths.is_url(path):
    return path
  target = os.path.abspath(os.path.expanduser(path))
  if os.path.islink(target) or os.path.isdir(target):
    raise UserInputError(f'{target} is a {"symbolic link" if os.path.islink(target) else "folder"}'
                         f'; expected a file name for the {_command(tool)} output')
  if os.path.lexists(target) and not owned and _json_tool(target) != tool:
    raise UserInputError(f'{target} exists and is not a {_command(tool)} output (no '
                         f'"{FIELD}" field naming it); give a new file name')
  _check_parent_writable(target)
  return target


def write_file(path: str, tool: str, data: bytes, owned: bool = False) -> str:
  """Writes `data` to `path` through a temporary file beside it and a rename (readers never see a
  half-written file; mode 0o666 less the umask); parent folders are created. Returns the path
  (absolute). A URL is written by training.writers.write_bytes (its object appears whole).

  Raises:
    UserInputError: what check_file raises.
    training.writers.WriteFailed (a UserInputError): an OSError of the writing, as one line
      naming `path` and the errno text (the temporary file removed).
  """
  from segae_jax.training import paths, writers
  if paths.is_url(path):
    writers.write_bytes(path, data)
    return path
  target = check_file(path, tool, owned)
  tmp, created, done = None, [], False

  def create(p):
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))

  try:
    created = _make_parents(os.path.dirname(target))
    tmp = _unique(os.path.dirname(target), os.path.basename(target), 'tmp', create)
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, target)
    done = True
  except OSError as e:
    if e.errno is None:
      raise
    raise _write_error(target, e.errno, e.filename, None) from e
  finally:
    if not done:
      with contextlib.suppress(OSError):  # Its folder may be gone: nothing left to remove.
        if tmp:
          os.remove(tmp)
      _remove_created(created)
  return target


def json_bytes(obj: Mapping, sort_keys: bool = True) -> bytes:
  """`obj` as indented JSON text with a final newline (keys sorted unless `sort_keys` is False,
  where their order means something)."""
  return (json.dumps(obj, indent=2, sort_keys=sort_keys) + '\n').encode()


def write_json(path: str, obj: Mapping, tool: str, owned: bool = False,
               sort_keys: bool = True) -> str:
  """write_file of `obj` as JSON with FIELD {"tool": tool, "format": 1} added, by which a later
  run of the tool knows the file as its own. Returns the path. Raises as write_file."""
  return write_file(path, tool, json_bytes({**obj, FIELD: _stamp(tool)}, sort_keys), owned)


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [h, w, 1 or 3] (or [h, w]) as PNG file bytes."""
  from PIL import Image
  image = np.asarray(image)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image).save(
      buffer, format='PNG')
  return buffer.getvalue()


def check_reused_folder(path: str, tool: str, own_file: str) -> str:
  """For a folder a tool fills over several runs (a sweep's workdir): checks that `path` is new,
  empty, or holds the tool's `own_file` (e.g. sweep.json, written before anything else), and
  that it is writable; returns it absolute. Nothing is written.

  Raises:
    UserInputError: a file, or a non-empty folder without `own_file`, or not writable.
  """
  target = os.path.abspath(os.path.expanduser(path))
  if os.path.lexists(target):
    if not os.path.isdir(target):
      raise UserInputError(f'{target} is a file; expected a folder for the {_command(tool)} '
                           'output')
    try:
      entries = os.listdir(target)
    except OSError as e:
      raise UserInputError(f'{target}: cannot list the folder ({e.strerror})') from None
    if entries and own_file not in entries:
      raise UserInputError(f'{target} exists and holds no {own_file} of a {_command(tool)}; '
                           'give a new or empty folder')
    if not os.access(target, os.W_OK | os.X_OK):
      raise UserInputError(f'{target}: cannot write in it (permission denied or a read-only '
                           'file system)')
    return target
  _check_parent_writable(target)
  return target
