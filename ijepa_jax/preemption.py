"""Stop cleanly on SIGTERM / SIGINT: finish the step, checkpoint, exit 0.

Cloud TPU VMs and SLURM send SIGTERM before preemption. The handler only records the signal; the loop
asks `should_stop(step)` after each step. With several processes they must all stop at the same step,
so the flag is all-gathered, every `every` steps (a host sync, hence not every step). A second
SIGINT (Ctrl-C twice) interrupts at once.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:

  def __init__(self, every: int = 1):
    self.every = max(1, every)
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else "a signal on another process"

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if step % self.every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
    return bool(np.any(flags))
