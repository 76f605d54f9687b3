"""SIGTERM / SIGINT on a real training process: finish the step, checkpoint, exit 0, resume exactly."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from test_cli import TINY

LONG = ["--config.total_steps=300", "--config.log_every=1", "--config.checkpoint_every=1000",
        "--config.probe.enabled=False"]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _cmd(workdir):
  return [sys.executable, "-m", "ijepa_jax.main", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
          *TINY, *LONG]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(step, loss) of the 300-step run, never interrupted: the reference of every interrupted one."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [(r["step"], r["loss"]) for r in _rows(workdir)]


def _until(workdir, rows: int, proc) -> None:
  """Waits until metrics.jsonl holds `rows` rows (or the process ended)."""
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(workdir / "metrics.jsonl") and open(workdir / "metrics.jsonl").read().count("\n") >= rows:
      return
    time.sleep(0.01)


def test_sigterm_then_sigint_checkpoint_and_each_resume_is_exact(tmp_path, uninterrupted):
  """A signal finishes the step, checkpoints it, exits 0 and names the resume command; SIGTERM, then SIGINT on
  the resumed run, then the same command finishes with the uninterrupted run's losses."""
  workdir, stopped, stops = tmp_path / "run", 0, []
  for sig in (signal.SIGTERM, signal.SIGINT):
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _until(workdir, stopped + 5, proc)   # training under way
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert ("Resumed from" in out) == (stopped > 0)
    stopped = max(r["step"] for r in _rows(workdir))
    assert 5 <= stopped < 300
    assert f"Stopped by {sig.name} at step {stopped} of 300" in out and "Re-run the same command" in out
    stops.append(stopped)
    assert sorted(map(int, os.listdir(workdir / "checkpoints"))) == stops   # durable, at each step it stopped

  resumed = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Resumed from" in resumed.stdout and "Finished at step 300 of 300" in resumed.stdout
  assert [(r["step"], r["loss"]) for r in _rows(workdir)] == uninterrupted


def test_sigkill_at_random_steps_then_resume_logs_the_uninterrupted_losses(tmp_path, uninterrupted):
  """kill -9 (no chance to checkpoint) at a random step, 3 times, each time on the run the same command
  resumed; it then finishes, and metrics.jsonl ends up exactly as the uninterrupted run's."""
  args = ["--config.checkpoint_every=7", "--config.keep_checkpoints=2"]
  workdir, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"
  kill_at = sorted(random.Random().sample(range(2, 80), 3))  # arbitrary steps on purpose: in the failure message
  complete = []   # the complete checkpoints when the previous invocation was killed (a cut-short save is a temp dir)
  for n, at in enumerate([*kill_at, None]):
    log = tmp_path / f"stdout_{n}.txt"
    with open(log, "w") as stdout:
      proc = subprocess.Popen(_cmd(workdir) + args, cwd=REPO, stdout=stdout, stderr=subprocess.DEVNULL)
      if at is None:
        assert proc.wait(timeout=600) == 0
      else:
        _until(workdir, at, proc)
        proc.kill()
        proc.wait()
    out = log.read_text()
    if complete:
      assert f"Resumed from {ckpt_dir}/{complete[-1]} (step {complete[-1]})" in out, (kill_at, n, out[-2000:])
    complete = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if ckpt_dir.exists() else []
  got = [(r["step"], r["loss"]) for r in _rows(workdir)]
  assert got == uninterrupted, f"killed at steps {kill_at}"
