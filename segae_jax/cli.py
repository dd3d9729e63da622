"""Shared command-line behaviour: one-line errors with exit status 2 for bad input."""
import contextlib
import logging as std_logging
import re
import sys
from typing import Callable, List, Optional, Sequence

from absl import app, flags, logging

from segae_jax.errors import RunStopped, UserInputError

EXIT_BAD_INPUT = 2


def setup_logging() -> None:
  """Our progress lines at INFO; library chatter (orbax logs every save at INFO, JAX its backend
  probing) only from WARNING."""
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger('segae_jax').setLevel(std_logging.INFO)
  # tifffile logs each damaged page directory it skips; a file it cannot read is our own one
  # line (data.images), and one it can read had its pixels whole.
  std_logging.getLogger('tifffile').setLevel(std_logging.CRITICAL)
  absl_logger = std_logging.getLogger('absl')
  if _quiet_tfds not in absl_logger.filters:
    absl_logger.addFilter(_quiet_tfds)
  for handler in std_logging.getLogger().handlers:
    if not any(isinstance(f, OnceEach) for f in handler.filters):
      handler.addFilter(OnceEach())


class OnceEach(std_logging.Filter):
  """Lets each distinct warning of ours through once: a dataset reads every file more than once
  (checked, then stored), and a reading or conversion named once per file is enough."""

  def __init__(self):
    super().__init__()
    self._seen = set()

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno != std_logging.WARNING or not record.name.startswith('segae_jax'):
      return True
    key = (record.name, record.getMessage())
    if key in self._seen:
      return False
    self._seen.add(key)
    return True


def _quiet_tfds(record: std_logging.LogRecord) -> bool:
  """Drops tfds's warning 'Using custom data configuration: FolderConfig(...)': every folder
  dataset is a custom configuration by design, and the line repeats every setting at length.
  The run's own data summary says what matters."""
  return not str(record.msg).startswith('Using custom data configuration')


def fail(message: str) -> None:
  """Prints `error: message` as one line on stderr and exits with status 2."""
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _flag_value(argv: List[str], name: str) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_override(argv: List[str], error: str) -> str:
  """ml_collections reports a missing field as a KeyError/AttributeError holding the name (and
  maybe a "Did you mean" hint); turn that into one line naming the offending argument."""
  match = re.search(r"([A-Za-z_]\w*)", error)
  key = match.group(1) if match else error
  hint = re.search(r'Did you mean "(\w+)"', error)
  hint = f'; did you mean {hint.group(1)!r}?' if hint else ''
  for arg in argv:
    path = arg.split('=', 1)[0]
    if path.startswith('--config.') and key in path.split('.'):
      return f'unknown config key {path[2:]!r} (from {arg}): the config has no such field{hint}'
  return f'unknown config key {key!r}{hint}'


def _shipped_config(argv: List[str]) -> List[str]:
  """argv with --config=NAME (a shipped config's name, e.g. 'folder') made its file's path, and
  `import configs` made to work from any directory (shipped_configs); an unknown name fails in
  one line."""
  from segae_jax import shipped_configs
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + shipped_configs.resolve(arg.split('=', 1)[1])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = shipped_configs.resolve(out[i + 1])
  shipped_configs.make_importable()
  return out


def parse_flags(argv: List[str]) -> List[str]:
  """absl flag parsing for config-file CLIs that reports bad input as one line with status 2.

  Covers: unknown or mistyped flags, `--config.<key>` naming no field, a value of the wrong type,
  a config file that does not exist, fails to import or has no get_config().
  """
  if 'config' in flags.FLAGS:
    try:
      argv = _shipped_config(argv)
    except UserInputError as e:
      fail(str(e))
  config_file = _flag_value(argv, 'config')
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    if 'get_config' in str(e):
      fail(f'config file {config_file} has no get_config() function')
    fail(_unknown_override(argv, str(e)))
  if 'config' in flags.FLAGS:
    try:
      flags.FLAGS.config.get('seed')  # config_flags defers a failed load to the first access.
    except OSError as e:
      reason = str(e).strip().splitlines()[-1].strip()
      fail(f'config file {config_file} could not be loaded: {reason}')
  return remaining


@contextlib.contextmanager
def user_errors():
  """Turns UserInputError into a one-line message and exit status 2, and RunStopped (divergence,
  preemption) into one line and its own exit status; other errors propagate."""
  try:
    yield
  except UserInputError as e:
    fail(str(e))
  except RunStopped as e:
    print(f'stopped: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(e.exit_code)


def run_command(main: Callable[[], None], define_flags: Callable[[], None],
                required: Sequence[str]) -> None:
  """Runs a `python -m segae_jax.<command>` program: defines its flags (only now, so several
  commands import side by side as libraries), marks `required` ones, parses argv (bad flags: one
  line, status 2), refuses positional arguments, sets up logging and calls main() inside
  user_errors (UserInputError: one line, status 2; RunStopped: one line, its own status)."""
  define_flags()
  flags.mark_flags_as_required(list(required))

  def _main(argv: List[str]) -> None:
    if len(argv) > 1:
      fail(f'unexpected arguments {" ".join(argv[1:])}')
    setup_logging()
    with user_errors():
      main()

  app.run(_main, flags_parser=parse_flags)
