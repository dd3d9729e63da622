"""The configs shipped with segae_jax: the repository's configs/ folder, installed as the package
segae_jax.configs (pyproject.toml's package-dir), so that a command given --config=NAME finds
configs/NAME.py from any directory, and the files' own `from configs import default` works there.
"""
import importlib
import importlib.util
import os
import sys
from typing import List

from segae_jax.errors import UserInputError

PACKAGE = 'segae_jax.configs'


def directory() -> str:
  """The folder holding the shipped config files."""
  return list(importlib.util.find_spec(PACKAGE).submodule_search_locations)[0]


def names() -> List[str]:
  """The shipped configs' names (file stems), sorted."""
  return sorted(f[:-3] for f in os.listdir(directory())
                if f.endswith('.py') and not f.startswith('_'))


def resolve(value: str) -> str:
  """A --config value -> what ml_collections' config-file flag loads.

  A bare name (no path separator, no `.py`; optionally 'name:ARGS' with config_flags' arguments)
  always means a shipped config, whatever files the current directory holds: a file that happens
  to be called `folder` is never executed in place of configs/folder.py. Anything else is a path,
  returned unchanged once it is known to be a readable file, so that a missing one is one line
  here rather than the loader's traceback when `--config.<key>=` overrides follow.

  Raises:
    UserInputError: a name no shipped config has, or a path that is missing, a folder or
      unreadable.
  """
  path, sep, args = value.partition(':')
  if is_name(path):
    if path not in names():
      raise UserInputError(f'--config={value}: no shipped config of that name (a bare name means '
                           f'a shipped config; give a file as a path, e.g. ./{path}.py); '
                           f'shipped: {", ".join(names())}')
    return os.path.join(directory(), path + '.py') + sep + args
  if not path:
    raise UserInputError('--config is empty; expected a config file or a shipped config name '
                         f'({", ".join(names())})')
  if os.path.isdir(path):
    raise UserInputError(f'config file {path} is a folder; expected a Python file with '
                         'get_config()')
  if not os.path.exists(path):
    raise UserInputError(f'config file {path} does not exist')
  try:
    with open(path, 'rb'):
      pass
  except OSError as e:
    raise UserInputError(f'config file {path} could not be loaded: {e.strerror}') from None
  return value


def is_name(path: str) -> bool:
  """Whether a --config value (without ':ARGS') names a shipped config rather than a file."""
  return bool(path) and '/' not in path and os.sep not in path and not path.endswith('.py')


def make_importable() -> None:
  """Makes `import configs` the shipped configs (an alias of segae_jax.configs) unless it already
  is their folder (a command run from the repository root), so that a config file loaded by path
  from any directory can import its siblings as the shipped ones do."""
  found = importlib.util.find_spec('configs')
  locations = list(found.submodule_search_locations or []) if found else []
  if not any(os.path.realpath(p) == os.path.realpath(directory()) for p in locations):
    sys.modules['configs'] = importlib.import_module(PACKAGE)
