"""Shared command-line behaviour: one-line errors with exit status 2 for bad input."""
import contextlib
import sys

from absl import flags

from segae_jax.errors import UserInputError

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
  """Prints `error: message` as one line on stderr and exits with status 2."""
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def parse_flags(argv):
  """absl flag parsing that reports bad flags (unknown config key, wrong type, missing config
  file) as one line with status 2 instead of absl's usage dump and status 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


@contextlib.contextmanager
def user_errors():
  """Turns UserInputError into a one-line message and exit status 2; other errors propagate."""
  try:
    yield
  except UserInputError as e:
    fail(str(e))

