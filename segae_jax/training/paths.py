"""Workdir paths: a local folder or a URL (gs://, s3://, ...) that etils.epath serves.

A run's files (metrics.jsonl, config.json, results.json, pictures, the checkpoint folders) are
read and written through `epath.Path`, which serves local paths itself and URLs through fsspec
(gcsfs for gs://, s3fs for s3://); orbax writes the checkpoints' arrays to the same URL through
tensorstore. Paths stay strings between functions: a local one absolute, a URL as given.
"""
import os
from typing import Any

import fsspec
from etils import epath

from segae_jax.errors import UserInputError


def is_url(path: str) -> bool:
  return '://' in str(path)


def resolve(path: str, what: str = 'workdir') -> str:
  """`path` made absolute (a local folder, `~` expanded) or, for a URL, checked and returned as
  given without a trailing slash.

  Raises:
    UserInputError: a URL whose scheme no installed filesystem serves (epath knows the scheme
      and fsspec has an implementation for it installed).
  """
  path = os.fspath(path)
  if not is_url(path):
    return os.path.abspath(os.path.expanduser(path))
  scheme = path.split('://', 1)[0]
  try:
    epath.Path(path)
    fsspec.get_filesystem_class(scheme)
  except KeyError:  # epath has no path class registered for the scheme.
    raise UserInputError(f'{what} {path}: no installed filesystem serves {scheme}:// (etils.epath '
                         'serves gs://, s3://, az://, hf:// and local paths)') from None
  except (ImportError, ValueError) as e:  # fsspec: unknown protocol or its package missing.
    raise UserInputError(f'{what} {path}: {scheme}:// cannot be served here ({e})') from None
  return path.rstrip('/')


def join(path: str, *parts: str) -> str:
  """`path`/`parts` for a local path or a URL (POSIX separators in URLs on any system)."""
  return str(epath.Path(path).joinpath(*parts))


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def open_file(path: str, mode: str = 'r') -> Any:
  return epath.Path(path).open(mode)


def replace(source: str, target: str) -> None:
  """Renames `source` to `target`, replacing it: atomic on a local file system (readers never
  see a half-written file); on object stores a copy then a delete, whose new object appears
  whole."""
  epath.Path(source).replace(target)
