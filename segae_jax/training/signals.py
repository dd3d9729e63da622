"""Preemption: SIGTERM/SIGINT noted by a handler, acted on by the loop at a step boundary."""
import logging
import signal
import threading
from typing import Optional

import jax
import numpy as np

log = logging.getLogger(__name__)


class StopSignals:
  """SIGTERM and SIGINT handlers that only note the signal, so the training loop can stop at the
  next step boundary with a checkpoint (a preemption notice gives seconds, not minutes). A second
  signal of the same kind gets the previous handler (e.g. Ctrl-C twice interrupts at once).
  Installed only from the main thread (Python's rule for signal handlers)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    if self.received == signum:
      signal.signal(signum, self._previous[signum])
      signal.raise_signal(signum)
      return
    self.received = signum
    log.warning('Received %s: stopping after this step with a checkpoint.',
                signal.Signals(signum).name)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> Optional[str]:
    """The signal's name once one arrived (in any process of a multi-process run: all of them
    must stop at the same step, or the next collective would wait forever), else None."""
    received = self.received or 0
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      received = int(np.max(multihost_utils.process_allgather(np.int32(received))))
    return signal.Signals(received).name if received else None
