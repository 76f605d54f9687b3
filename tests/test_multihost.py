"""Two real JAX processes on localhost (gloo CPU collectives, 2 devices each): train, checkpoint,
resume, and restore the result in a single process on one device."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import REPO
from test_cli import TINY

STEPS = ["--config.total_steps=5", "--config.log_every=1", "--config.checkpoint_every=1",
         "--config.probe.enabled=False", "--config.mesh.data=2", "--config.mesh.fsdp=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two_processes(workdir, *extra):
  port = _free_port()
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  return [subprocess.Popen(
      [sys.executable, "-m", "ijepa_jax.main", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       *TINY, *STEPS, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _run_two_processes(workdir, *extra):
  procs = _start_two_processes(workdir, *extra)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))]


def test_two_processes_resume_and_restore_on_one_device(tmp_path):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  _run_two_processes(full)
  _run_two_processes(resumed, "--config.run_steps=3")
  assert [s for s, _ in _losses(resumed)] == [1, 2, 3]
  _run_two_processes(resumed)
  assert _losses(resumed) == _losses(full)          # the same batches, bit-identical losses

  from ijepa_jax import train
  _, _, a = train.load(str(full))                   # written by 2 processes x 2 devices, read on 1 device
  _, _, b = train.load(str(resumed))
  assert int(a.step) == int(b.step) == 5
  assert len(jax.tree.leaves(a.params)[0].sharding.device_set) == 1
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.target, b.target)


def test_sigterm_on_one_process_stops_both_at_the_same_step(tmp_path):
  """A preemption notice reaches one host only; JAX's preemption sync point stops every process at
  the same step, with one checkpoint, and the same command resumes."""
  port = _free_port()
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  args = [*TINY, *STEPS, "--config.total_steps=100", "--config.checkpoint_every=1000"]

  def start():
    return [subprocess.Popen(
        [sys.executable, "-m", "ijepa_jax.main", "--config=configs/fashion_mnist.py", f"--workdir={tmp_path}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]

  procs = start()
  deadline = time.time() + 300
  while time.time() < deadline and not (
      os.path.exists(tmp_path / "metrics.jsonl") and open(tmp_path / "metrics.jsonl").read().count("\n") >= 5):
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  saved = os.listdir(tmp_path / "checkpoints")
  assert len(saved) == 1 and 5 <= int(saved[0]) < 100
  assert f"Stopped by a preemption notice (SIGTERM, JAX preemption sync point) at step {saved[0]}" in outs[0][0]
  assert [s for s, _ in _losses(tmp_path)] == list(range(1, int(saved[0]) + 1))

  port = _free_port()
  procs = start()
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "Resumed from" in outs[0][0] and "Finished at step 100 of 100" in outs[0][0]
  assert [s for s, _ in _losses(tmp_path)] == list(range(1, 101))


def test_two_processes_on_gcs_killed_then_resumed_from_the_bucket(gcs, tmp_path):
  """Checkpoints and metrics in a bucket (the `gcs` emulator), both processes SIGKILLed mid-run, the
  same command resumes from the bucket: exactly the losses of an uninterrupted local run."""
  from etils import epath
  full, workdir = tmp_path / "full", gcs("multihost")
  args = ["--config.total_steps=30", "--config.checkpoint_every=3"]
  _run_two_processes(full, *args)

  procs = _start_two_processes(workdir, *args)
  checkpoints = epath.Path(workdir) / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    done = [c for c in (checkpoints.iterdir() if checkpoints.exists() else ()) if (c / "commit_success.txt").exists()]
    if done:
      break
    time.sleep(0.2)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  errs = [p.communicate(timeout=60)[1] for p in procs]
  assert all(p.returncode == -signal.SIGKILL for p in procs), errs[0][-3000:]  # killed, not finished
  killed_at = [json.loads(r)["step"] for r in (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  assert 3 <= len(killed_at) < 30

  _run_two_processes(workdir, *args)
  rows = [json.loads(r) for r in (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == _losses(full)   # the next batches exactly, bit for bit
