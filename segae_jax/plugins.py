"""A user's own code in a run: config.plugins names modules imported before anything is built, in
which the public decorators (segae_jax.register_objective, register_loss, register_model,
register_view, register_dataset) register objectives, loss terms, models, views and datasets that
the config then uses by name, with no change to segae_jax.

Each entry of config.plugins is an importable module name ('mymethod', 'lab.methods') or the
path of a .py file ('methods/mymethod.py'). Names resolve from sys.path and the current
directory (a console script such as segae-train does not put it on sys.path); a file's folder is
added to sys.path and the file imported by its stem, so grain's worker processes import it by
that name too. Loading is idempotent: a module already imported is not executed again.

Raises (load): UserInputError in one line: a module that cannot be found or fails to import
(its error named), or a name it registers that is taken (Registry.register).
"""
import importlib
import os
import sys
import traceback
from types import ModuleType
from typing import List, Sequence, Union

from segae_jax.errors import UserInputError


def _on_path(folder: str) -> None:
  """Appends `folder` to sys.path unless it is there: installed modules keep their precedence."""
  folder = os.path.abspath(folder)
  if folder not in (os.path.abspath(p or os.curdir) for p in sys.path):
    sys.path.append(folder)


def _failure(entry: str, error: BaseException) -> UserInputError:
  """The one line of a module that raised while it was imported: where, and what."""
  if isinstance(error, UserInputError):
    return UserInputError(f'config.plugins: {entry}: {error}')
  frames = traceback.extract_tb(error.__traceback__)
  where = f' ({frames[-1].filename}:{frames[-1].lineno})' if frames else ''
  return UserInputError(f'config.plugins: {entry} failed to import{where}: '
                        f'{type(error).__name__}: {" ".join(str(error).split())}')


def _import(entry: str, name: str) -> ModuleType:
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name is not None and (name == e.name or name.startswith(e.name + '.')):  # Itself.
      raise UserInputError(f'config.plugins: no module {name!r} (searched sys.path and the '
                           f'current directory {os.getcwd()})') from None
    raise _failure(entry, e) from None
  except Exception as e:  # pylint: disable=broad-except
    raise _failure(entry, e) from None


def load_one(entry: str) -> ModuleType:
  """Imports one config.plugins entry (module doc) and returns the module.

  Raises:
    UserInputError: it is not found, fails to import, or registers a name that is taken.
  """
  if not isinstance(entry, str) or not entry:
    raise UserInputError(f'config.plugins: expected module names or .py paths, got {entry!r}')
  if not entry.endswith('.py'):
    _on_path(os.getcwd())
    return _import(entry, entry)
  path = os.path.abspath(entry)
  if not os.path.isfile(path):
    raise UserInputError(f'config.plugins: {entry} does not exist')
  name = os.path.splitext(os.path.basename(path))[0]
  if not name.isidentifier():
    raise UserInputError(f'config.plugins: {entry}: {name!r} is not a module name; rename the '
                         'file (letters, digits and _)')
  loaded = sys.modules.get(name)
  if loaded is None:
    _on_path(os.path.dirname(path))
    loaded = _import(entry, name)
  source = os.path.abspath(getattr(loaded, '__file__', '') or '')
  if source != path:
    raise UserInputError(f'config.plugins: {entry}: the module name {name!r} is already '
                         f'{source or "a built-in module"}; rename the file')
  return loaded


def load(entries: Union[str, Sequence[str], None]) -> List[ModuleType]:
  """Imports config.plugins (`entries`: names or .py paths; one string is one entry), in order.

  Raises:
    UserInputError: as load_one, for the first entry that fails.
  """
  if not entries:
    return []
  if isinstance(entries, str):
    entries = (entries,)
  return [load_one(entry) for entry in entries]
