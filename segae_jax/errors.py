"""Errors that mean "the input is wrong", as opposed to a bug.

The CLIs print these as one line and exit with status 2; anything else is a bug and keeps its
traceback.
"""


class UserInputError(ValueError):
  """Bad config value, missing or malformed data, or a workdir that does not fit the run."""


class RunStopped(Exception):
  """Training stopped before its last step for a reason the user must see; `exit_code` is the
  command's exit status. The message is one line."""
  exit_code = 1


class TrainingDiverged(RunStopped):
  """A non-finite loss or gradient (config.nonfinite = 'stop'): the state of that step was not
  checkpointed; the newest checkpoint is the last good state."""
  exit_code = 3


class Preempted(RunStopped):
  """SIGTERM or SIGINT: a checkpoint of the current step was written and finished; re-running
  the same command resumes from it. 75 is EX_TEMPFAIL (sysexits.h): "try again later"."""
  exit_code = 75
