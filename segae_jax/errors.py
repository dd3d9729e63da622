"""Errors that mean "the input is wrong", as opposed to a bug.

The CLIs print these as one line and exit with status 2; anything else is a bug and keeps its
traceback.
"""


class UserInputError(ValueError):
  """Bad config value, missing or malformed data, or a workdir that does not fit the run."""
