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
  """(step, loss) of the 300-step run, never interrupted: the reference of both signals."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [(r["step"], r["loss"]) for r in _rows(workdir)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_resume_is_exact(tmp_path, sig, uninterrupted):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd(workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline:   # wait until training is under way
    if os.path.exists(workdir / "metrics.jsonl") and len(_rows(workdir)) >= 5:
      break
    time.sleep(0.2)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  stopped = max(r["step"] for r in _rows(workdir))
  assert 5 <= stopped < 300
  assert f"Stopped by {sig.name} at step {stopped} of 300" in out and "Re-run the same command" in out
  assert os.listdir(workdir / "checkpoints") == [str(stopped)]     # durable, at the step it stopped

  resumed = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Resumed from" in resumed.stdout and "Finished at step 300 of 300" in resumed.stdout
  assert [(r["step"], r["loss"]) for r in _rows(workdir)] == uninterrupted


def test_sigkill_at_random_steps_then_resume_logs_the_uninterrupted_losses(tmp_path):
  """kill -9 (no chance to checkpoint) at a random step, 3 times; the same command then continues from
  the last checkpoint and metrics.jsonl ends up exactly as an uninterrupted run's."""
  args = ["--config.total_steps=60", "--config.checkpoint_every=7", "--config.keep_checkpoints=2"]
  reference = subprocess.run(_cmd(tmp_path / "ref") + args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = [(r["step"], r["loss"]) for r in _rows(tmp_path / "ref")]
  assert [s for s, _ in expected] == list(range(1, 61))
  rng = random.Random()  # arbitrary steps on purpose; they are in the failure message
  for trial in range(3):
    workdir = tmp_path / f"trial{trial}"
    kill_at = rng.randrange(2, 58)
    proc = subprocess.Popen(_cmd(workdir) + args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(workdir / "metrics.jsonl") and open(workdir / "metrics.jsonl").read().count("\n") >= kill_at:
        break
      time.sleep(0.01)
    proc.kill()
    proc.wait()
    killed = open(workdir / "metrics.jsonl").read().count("\n")
    ckpt_dir = workdir / "checkpoints"   # complete checkpoints only (a save cut short is a temp dir)
    complete = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if ckpt_dir.exists() else []
    resumed = subprocess.run(_cmd(workdir) + args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, (kill_at, resumed.stderr[-2000:])
    got = [(r["step"], r["loss"]) for r in _rows(workdir)]
    assert got == expected, f"killed after step {killed} (aimed at {kill_at})"
    if complete:
      assert f"Resumed from {ckpt_dir}/{complete[-1]} (step {complete[-1]})" in resumed.stdout, killed
