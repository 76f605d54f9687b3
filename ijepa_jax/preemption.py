"""Stop cleanly on SIGTERM / SIGINT: finish the step, checkpoint, exit 0.

Cloud TPU VMs and SLURM send SIGTERM before preemption. The handler only records the signal; the loop
asks `should_stop(step)` after each step. With several processes they must all stop at the same step:
- SIGTERM goes to JAX's preemption service (started by jax.distributed.initialize): a notice on any
  process makes every process reach the same sync point, `reached_preemption_sync_point(step)`, which
  is a local check, so it is asked every step;
- SIGINT (Ctrl-C) is recorded here and all-gathered every `every` steps (a host sync, hence not
  every step). A second SIGINT interrupts at once.
With one process both signals are simply recorded here.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax._src import distributed
from jax.experimental import multihost_utils


class StopRequest:

  def __init__(self, every: int = 1):
    self.every = max(1, every)
    self.signum = None
    self.preempted = False  # by JAX's preemption sync point (multi-process runs)
    self._previous = {}

  @staticmethod
  def _jax_handles_sigterm() -> bool:
    return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = (signal.SIGINT,) if self._jax_handles_sigterm() else (signal.SIGTERM, signal.SIGINT)
      for s in signals:
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
    if self.preempted:
      return "a preemption notice (SIGTERM, JAX preemption sync point)"
    return signal.Signals(self.signum).name if self.signum else "a signal on another process"

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    if self._jax_handles_sigterm() and multihost_utils.reached_preemption_sync_point(step):
      self.preempted = True
      return True
    if step % self.every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
    return bool(np.any(flags))
