"""Preemption: SIGTERM/SIGINT noted, acted on by the loop at a step boundary, at the same step in
every process of a multi-process run.

One process: Python handlers note the signal; the loop stops after the step it arrived in.

Several processes (jax.distributed): JAX's coordination service already listens for SIGTERM in
every process (its preemption notifier, installed by jax.distributed.initialize) and agrees on a
step at which all of them stop: `multihost_utils.reached_preemption_sync_point(step)`, asked at
every step, is True in every process at the same step (one past the largest step any process had
reached when the notice arrived). Asking costs no collective: the answer is local until a notice
propagates (benchmarks/stop_check.py measures it against the all-gather it replaced). So SIGTERM
keeps the notifier's handler (a Python handler would replace it), and SIGINT is noted and passed
on to the notifier as a SIGTERM to this process. With the preemption service disabled
(jax_enable_preemption_service=False) the processes agree by an all-gather of their signals every
step instead.
"""
import logging
import os
import signal
import threading
from typing import Optional

import jax
import numpy as np

log = logging.getLogger(__name__)


def coordination_service_stops() -> bool:
  """Whether stops are agreed through JAX's preemption service: a multi-process run with the
  service enabled (jax.distributed.initialize then started its notifier)."""
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class StopSignals:
  """SIGTERM and SIGINT handlers that only note the signal, so the training loop can stop at a
  step boundary with a checkpoint (a preemption notice gives seconds, not minutes). A second
  signal of the same kind gets the previous handler (e.g. Ctrl-C twice interrupts at once).
  Installed only from the main thread (Python's rule for signal handlers). See the module doc
  for several processes."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}
    self.agreed = coordination_service_stops()

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is threading.main_thread():
      # SIGTERM stays with the coordination service's notifier when it has it.
      signals = (signal.SIGINT,) if self.agreed else (signal.SIGTERM, signal.SIGINT)
      for sig in signals:
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
    if self.agreed:  # Tell every process, through the notifier.
      os.kill(os.getpid(), signal.SIGTERM)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, step: int) -> Optional[str]:
    """The signal's name when the run should stop after `step` (in a multi-process run: when
    every process stops at this step, or the next collective would wait forever), else None.
    Called at every step, with the same steps in every process."""
    if self.agreed:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      if not multihost_utils.reached_preemption_sync_point(step):
        return None
      return signal.Signals(self.received or signal.SIGTERM).name
    received = self.received or 0
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      received = int(np.max(multihost_utils.process_allgather(np.int32(received))))
    return signal.Signals(received).name if received else None
