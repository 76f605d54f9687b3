"""Two real JAX processes on localhost (gloo CPU collectives, 2 devices each): train, checkpoint, resume on
another process count, stop together on a preemption notice, survive a kill with the workdir in a bucket,
restore the result on one device, and evaluate."""
import json
import os
import shutil
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


def _run_one_process(workdir, *extra):
  """One process with 4 CPU devices: the two-process runs' devices, in one process."""
  done = subprocess.run(
      [sys.executable, "-m", "ijepa_jax.main", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
       *TINY, *STEPS, "--config.cpu_devices=4", *extra], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))]


def _assert_same_losses(got, want):
  # The same global batches on the same 4 devices; the cross-process reductions (gloo) may add in
  # another order than the in-process ones, hence a float tolerance rather than bit equality.
  assert [s for s, _ in got] == [s for s, _ in want]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=1e-5)


def test_elastic_resume_across_process_counts(tmp_path):
  """The data order is a function of the global step: 1 process x 4 devices and 2 processes x 2 devices
  train on the same global batches (the release's masks, each process holding half of a mask group) to
  the same losses, a checkpoint of either resumes on the other with an uninterrupted run's losses, and
  every result restores on one device."""
  release_masks = ["--config.mask.counts=release", "--config.keep_checkpoints=10"]
  one = tmp_path / "one"                        # the uninterrupted reference, in one process
  _run_one_process(one, *release_masks)
  two_then_one = tmp_path / "two_then_one"
  _run_two_processes(two_then_one, *release_masks, "--config.run_steps=2")
  _assert_same_losses(_losses(two_then_one), _losses(one)[:2])
  out = _run_one_process(two_then_one, *release_masks)
  assert "Resumed from" in out.stdout and "damaged" not in out.stdout + out.stderr
  _assert_same_losses(_losses(two_then_one), _losses(one))

  one_then_two = tmp_path / "one_then_two"      # the reference as it was at step 2, resumed by 2 processes
  shutil.copytree(one, one_then_two)
  for step in os.listdir(one_then_two / "checkpoints"):
    if int(step) > 2:
      shutil.rmtree(one_then_two / "checkpoints" / step)
  _run_two_processes(one_then_two, *release_masks)
  _assert_same_losses(_losses(one_then_two), _losses(one))

  from ijepa_jax import train
  _, _, a = train.load(str(one))
  for other in (two_then_one, one_then_two):
    _, _, b = train.load(str(other))
    assert int(b.step) == 5 and len(jax.tree.leaves(b.params)[0].sharding.device_set) == 1
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a.target, b.target)


def test_two_processes_on_gcs_preempted_then_killed_then_resumed_from_the_bucket(gcs, tmp_path):
  """Checkpoints and metrics in a bucket (the `gcs` emulator). A preemption notice reaches one host only:
  JAX's preemption sync point stops both processes at the same step, with a checkpoint of it. The same
  command resumes; both processes are then SIGKILLed after its next checkpoint; the same command resumes
  from the bucket again: exactly the losses of an uninterrupted local run."""
  from etils import epath
  full, workdir = tmp_path / "full", gcs("multihost")
  args = ["--config.total_steps=40", "--config.checkpoint_every=3"]
  _run_two_processes(full, *args)
  metrics, checkpoints = epath.Path(workdir) / "metrics.jsonl", epath.Path(workdir) / "checkpoints"
  steps = lambda: [json.loads(r)["step"] for r in metrics.read_text().splitlines()] if metrics.exists() else []
  from ijepa_jax.checkpoint import finished_steps

  procs = _start_two_processes(workdir, *args)
  deadline = time.time() + 300
  while time.time() < deadline and len(steps()) < 2 and all(p.poll() is None for p in procs):
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  stopped = steps()[-1]
  assert 2 <= stopped < 40 and steps() == list(range(1, stopped + 1))
  assert f"Stopped by a preemption notice (SIGTERM, JAX preemption sync point) at step {stopped}" in outs[0][0]
  assert finished_steps(checkpoints)[-1] == stopped

  procs = _start_two_processes(workdir, *args)
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if max(finished_steps(checkpoints), default=0) > stopped:
      break
    time.sleep(0.1)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  errs = [p.communicate(timeout=60)[1] for p in procs]
  assert all(p.returncode == -signal.SIGKILL for p in procs), errs[0][-3000:]  # killed, not finished
  assert stopped < len(steps()) < 40

  _run_two_processes(workdir, *args)
  rows = [json.loads(r) for r in metrics.read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == _losses(full)   # the next batches exactly, bit for bit


# ------------------------------------------------------------------------------------- evaluation at scale
def _fashion_folder(root, train=1200, val=400):
  """Fashion-MNIST's first images written as PNG class folders (train/, val/): real images, an image folder."""
  from PIL import Image
  from ijepa_jax.data import load_fashion_mnist, DEFAULT_FASHION_MNIST_PATH
  for split, fm_split, n in (("train", "train", train), ("val", "test", val)):
    images, labels = load_fashion_mnist(DEFAULT_FASHION_MNIST_PATH, fm_split)
    for i in range(n):
      d = os.path.join(root, split, f"class_{labels[i]}")
      os.makedirs(d, exist_ok=True)
      Image.fromarray(images[i, :, :, 0], "L").save(os.path.join(d, f"fm_{fm_split}_{i:05d}.png"))


def _evaluate_cmd(checkpoint, folder, out, *extra):
  return [sys.executable, "-m", "ijepa_jax.evaluate", f"--checkpoint={checkpoint}", "--config=configs/fashion_mnist.py",
          "--config.data.source=image_folder", f"--config.data.path={folder}", "--config.data.eval_split=val",
          "--config.probe.shard_size=50", "--config.probe.batch_size=32", "--config.probe.in_memory_gib=0",
          "--config.probe.sgd_epochs=3", "--config.probe.sgd_decay_epochs=1",
          "--config.probe.random_init_baseline=False", "--config.probe.raw_pixels_baseline=False",
          "--config.probe.weight_decays=(0.01,)", "--config.probe.lowshot_fraction=0.05",
          "--config.probe.lowshot_seeds=(0,)", "--eval=linear,lowshot,knn", f"--out={out}", *extra]


def _shard_files(out):
  root = os.path.join(out, "eval_cache", "2", "trained")
  return {os.path.join(s, f): os.stat(os.path.join(root, s, f)).st_mtime_ns
          for s in ("train", "val") if os.path.isdir(os.path.join(root, s))
          for f in os.listdir(os.path.join(root, s)) if f.startswith("shard_") and f.endswith(".npz")}


def test_evaluation_on_two_processes_equals_one_and_resumes_after_a_kill(tmp_path):
  """Streamed probes of an encoder pretrained on Fashion-MNIST's IDX files, evaluated on the same kind of images as
  an image folder: 1 process with 2 devices and 2 processes with 1 each write the same feature shards and the
  same results; a kill during extraction, then the same command, finishes without redoing finished shards."""
  from conftest import tiny_config
  from ijepa_jax import train
  folder, ckpt = tmp_path / "folder", tmp_path / "run"
  _fashion_folder(str(folder))
  train.train_and_evaluate(tiny_config(total_steps=2, **{"model.depth": 4}), str(ckpt))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  one = subprocess.run(_evaluate_cmd(ckpt, folder, tmp_path / "one"), cwd=REPO, capture_output=True, text=True,
                       env=dict(env, JAX_NUM_CPU_DEVICES="2"), timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  assert "round 1/" in one.stderr and "images/s" in one.stderr                  # the progress line
  port = _free_port()
  procs = [subprocess.Popen(_evaluate_cmd(ckpt, folder, tmp_path / "two", f"--coordinator_address=127.0.0.1:{port}",
                                          "--num_processes=2", f"--process_id={i}"),
                            cwd=REPO, env=dict(env, JAX_NUM_CPU_DEVICES="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  got, want = (json.load(open(tmp_path / d / "eval.json")) for d in ("two", "one"))
  assert got["train_examples"] == 1200 and got["test_examples"] == 400
  for name, row in want["table"].items():
    assert {k: r["path"] for k, r in row.items()} == {"linear": "streamed", "lowshot": "in memory", "knn": "streamed"}
    for ev, r in row.items():
      assert abs(got["table"][name][ev]["top1"] - r["top1"]) <= 1 / 400, (name, ev)   # at most one test image
  assert want["knn_top1"] == got["knn_top1"] and want["lowshot_top1"] == got["lowshot_top1"]
  assert want["knn_top1"] > 0.5 and want["linear_top1"] > 0.3                    # chance: 0.1
  for shard in _shard_files(tmp_path / "one"):
    a, b = (np.load(tmp_path / d / "eval_cache" / "2" / "trained" / shard) for d in ("one", "two"))
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(a["features"].astype(np.float32), b["features"].astype(np.float32), atol=2e-3)

  # Killed during extraction, then the same command: the finished shards are kept as they are.
  cmd = _evaluate_cmd(ckpt, folder, tmp_path / "killed")
  proc = subprocess.Popen(cmd, cwd=REPO, env=dict(env, JAX_NUM_CPU_DEVICES="2"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not _shard_files(tmp_path / "killed") and time.time() < deadline and proc.poll() is None:
    time.sleep(0.02)
  proc.kill()
  proc.wait()
  before = _shard_files(tmp_path / "killed")
  assert 0 < len(before) < len(_shard_files(tmp_path / "one")), len(before)       # killed part-way
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(env, JAX_NUM_CPU_DEVICES="2"),
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  after = _shard_files(tmp_path / "killed")
  assert set(after) == set(_shard_files(tmp_path / "one"))
  assert all(after[f] == t for f, t in before.items())                           # not redone
  assert json.load(open(tmp_path / "killed" / "eval.json"))["table"] == want["table"]
