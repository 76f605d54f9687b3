"""Where training metrics go: metrics.jsonl, TensorBoard event files and a live progress line.

Only process 0 writes; on the other processes every method is a no-op. The workdir may be local or
gs:// (ijepa_jax.storage): `flush()` makes every row so far durable there.
"""
from __future__ import annotations

import json
import sys
import time

import jax

from ijepa_jax import storage


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _summary_writer():
  """tensorboardX's SummaryWriter (a pure-python event writer: no TensorFlow needed), imported without torch:
  tensorboardX imports torch when it is installed (~1.5 s at every run's start) only to accept torch tensors,
  and the trainer logs floats. A None entry in sys.modules makes `import torch` fail for that import alone."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
    """start_step: the step the run (re)starts from. Rows logged after it by an earlier invocation that
    was killed before its next checkpoint are dropped, so metrics.jsonl reads like one uninterrupted run."""
    self.active = jax.process_index() == 0
    self.total_steps = total_steps
    self._tty = sys.stdout.isatty()
    self._tb = None
    if not self.active:
      return
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    path = storage.join(workdir, "metrics.jsonl")
    _truncate_after(path, start_step)
    self._jsonl = storage.AppendFile(path)
    SummaryWriter = _summary_writer()
    storage.register_tensorboard()
    # purge_step: TensorBoard hides the killed invocation's events after the checkpoint.
    self._tb = SummaryWriter(storage.join(workdir, "tensorboard"), purge_step=start_step or None)

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step":
        self._tb.add_scalar(f"train/{k}", v, step)

  def flush(self) -> None:
    """Makes every row written so far durable (called before each checkpoint)."""
    if self.active:
      self._jsonl.flush()
      self._tb.flush()

  def progress(self, step: int, metrics: dict, seconds_per_step: float) -> None:
    if not self.active:
      return
    eta = _fmt_eta((self.total_steps - step) * seconds_per_step)
    line = (f"step {step}/{self.total_steps} | loss {metrics['loss']:.4f} | "
            f"{metrics['images_per_sec']:.1f} img/s | lr {metrics['lr']:.2e} | ETA {eta}")
    if self._tty:
      sys.stdout.write("\r" + line + " " * 4)
    else:
      sys.stdout.write(line + "\n")
    sys.stdout.flush()

  def message(self, text: str) -> None:
    if self.active:
      if self._tty:
        sys.stdout.write("\n")
      print(text, flush=True)

  def close(self) -> None:
    if self.active:
      if self._tty:
        sys.stdout.write("\n")
      self._jsonl.close()
      self._tb.close()


def _truncate_after(path: str, step: int) -> None:
  """Keeps the rows of metrics.jsonl with row['step'] <= step (and drops a line cut short by a kill)."""
  p = storage.path(path)
  if not p.exists():
    return
  kept, dropped = [], 0
  for line in p.read_text().splitlines(keepends=True):
    try:
      row = json.loads(line)
      keep = line.endswith("\n") and row["step"] <= step
    except (ValueError, KeyError, TypeError):
      keep = False
    if keep:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    storage.write_text(p, "".join(kept))


class Timer:
  """Wall-clock time and step count since the last `lap()`."""

  def __init__(self):
    self._t = time.perf_counter()

  def lap(self) -> float:
    now = time.perf_counter()
    dt, self._t = now - self._t, now
    return dt


class InputBoundWarning:
  """Decides when to say that the input pipeline is the bottleneck: `data_wait_fraction` (the part of a log
  interval the loop spent waiting for its next batch) above `threshold` in `intervals` consecutive log
  intervals, the run's first `skip` intervals aside (start-up: worker processes, first prefetches). Says
  it once per run; the caller prints it (MetricWriter.message: process 0 only)."""

  def __init__(self, num_workers: int, threshold: float = 0.3, intervals: int = 3, skip: int = 1):
    self.num_workers, self.threshold, self.intervals, self.skip = int(num_workers), threshold, intervals, skip
    self._seen, self._high, self.warned = 0, [], False

  def update(self, data_wait_fraction: float) -> str | None:
    """The warning, the first time the condition holds; otherwise None."""
    self._seen += 1
    if self.warned or self._seen <= self.skip:
      return None
    self._high = self._high + [data_wait_fraction] if data_wait_fraction > self.threshold else []
    if len(self._high) < self.intervals:
      return None
    self.warned = True
    return (f"warning: the input pipeline is the bottleneck: the loop waited for data "
            f"{100 * min(self._high):.0f}-{100 * max(self._high):.0f}% of the time in the last {self.intervals} "
            f"log intervals (data_wait_fraction > {self.threshold:g}). Raise --config.data.num_workers "
            f"(now {self.num_workers}; each worker decodes on about one host core, see README 'cores per host') "
            f"or give the host more cores.")
