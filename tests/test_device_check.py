"""experiments/device_check.sh, the prepared GPU check, run on CPU with SMOKE=1 (its logic, not GPU numbers)."""
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = os.path.join(REPO, "experiments", "device_check.sh")


def _run(tmp_path, **env):
  # JAX_PLATFORMS=cpu: the script's own `import jax` would otherwise try the TPU plugin the test extra installs
  env = dict(os.environ, PYTHON=sys.executable, OUT_DIR=str(tmp_path), JAX_PLATFORMS="cpu", **env)
  return subprocess.run(["bash", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_device_check_runs_its_four_benchmarks(tmp_path):
  proc = _run(tmp_path, SMOKE="1")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert "== device" in out and "jax " in out and "== done in" in out
  text = (tmp_path / "device_check.md").read_text()
  sections = text.split("\n## ")[1:]
  assert len(sections) == 4, text
  xla, scan, cudnn, vitb = sections
  assert "--config.model.attention=xla" in xla and "--fit_batch=8,4" in xla
  assert "--config.model.scan_layers=False --config.model.remat=none" in xla   # the unrolled model
  # the first run's timed batch (per device 8 x the devices) is what the others run
  batch = xla.split("\n", 1)[0].rsplit("batch ", 1)[1]
  assert cudnn.split("\n", 1)[0].endswith(f"batch {batch}") and vitb.split("\n", 1)[0].endswith(f"batch {batch}")
  assert "--config.model.attention=cudnn" in cudnn
  assert "--config.model.scan_layers=True --config.model.remat=dots" in scan and scan.split("\n", 1)[0].endswith(f"batch {batch}")
  assert "first step's loss, bfloat16 / float32" in vitb
  for s in sections:
    assert "| images/s |" in s and "| memory per device" in s and "dtype bfloat16" in s


def test_device_check_without_wheels_names_the_fix(tmp_path):
  proc = _run(tmp_path, REQUIRED="no_such_module_for_this_test", WHEELS=str(tmp_path / "none"))
  assert proc.returncode == 2
  assert "no_such_module_for_this_test not installed" in proc.stderr and "make device-wheels" in proc.stderr
