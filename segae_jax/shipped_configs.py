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
  """A --config value -> what ml_collections' config-file flag loads: a name of a shipped config
  ('folder', or 'folder:ARGS' with config_flags' arguments) -> the path of its file; anything
  else (a path, an existing file) unchanged.

  Raises:
    UserInputError: a name no shipped config has.
  """
  path, sep, args = value.partition(':')
  if os.path.exists(path) or '/' in path or os.sep in path or path.endswith('.py') or not path:
    return value
  if path not in names():
    raise UserInputError(f'--config={value}: no such file, and no shipped config of that name; '
                         f'shipped: {", ".join(names())}')
  return os.path.join(directory(), path + '.py') + sep + args


def make_importable() -> None:
  """Makes `import configs` the shipped configs (an alias of segae_jax.configs) unless it already
  is their folder (a command run from the repository root), so that a config file loaded by path
  from any directory can import its siblings as the shipped ones do."""
  found = importlib.util.find_spec('configs')
  locations = list(found.submodule_search_locations or []) if found else []
  if not any(os.path.realpath(p) == os.path.realpath(directory()) for p in locations):
    sys.modules['configs'] = importlib.import_module(PACKAGE)
