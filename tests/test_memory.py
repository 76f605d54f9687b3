"""The memory report: compile-only train steps on fake CPU devices, bytes per device from the shardings."""
import subprocess
import sys

from conftest import REPO

TINY = ["--config.data.image_size=16", "--config.model.patch_size=2", "--config.model.width=32",
        "--config.model.depth=1", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
        "--config.model.predictor_width=16", "--config.model.predictor_depth=1", "--config.model.predictor_heads=2",
        "--config.batch_size=16", "--config.mask.reference_batch=16"]

SCRIPT = """
import sys, json, jax
jax.config.update("jax_num_cpu_devices", 4)
sys.path.insert(0, "tests")
from conftest import tiny_config
from ijepa_jax import memory
out = {}
for fsdp in (1, 4):
  c = tiny_config()
  c.mesh.data, c.mesh.fsdp = 4 // fsdp, fsdp
  out[fsdp] = memory.report(c, jax.devices()[:4])
print("RESULT" + json.dumps(out))
"""


def test_fsdp_divides_the_train_state_and_the_ratio_is_per_device_over_even_share():
  import json
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  dp, fsdp = out["1"], out["4"]
  assert dp["state_total"] == fsdp["state_total"] and dp["state"] == dp["state_total"]   # replicated
  assert fsdp["state"] < 0.4 * dp["state"]                                               # split 4 ways
  assert fsdp["state_ratio"] == fsdp["state"] / (fsdp["state_total"] / 4)
  assert fsdp["params"] + fsdp["opt_state"] + fsdp["target"] == fsdp["state"] and fsdp["temp"] > 0
  assert fsdp["mesh"] == {"data": 1, "fsdp": 4} and fsdp["batch"] == 16


def test_memory_cli_prints_the_table_and_rejects_bad_device_counts():
  base = [sys.executable, "-m", "ijepa_jax.memory", "--config=configs/fashion_mnist.py", "--config.mesh.data=1",
          "--config.mesh.fsdp=-1", *TINY]
  proc = subprocess.run(base + ["--devices=1,2", "--per_device_batch=8"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| devices | mesh | global batch |" in proc.stdout
  assert "| 1 | data 1 x fsdp 1 | 8 |" in proc.stdout and "| 2 | data 1 x fsdp 2 | 16 |" in proc.stdout  # per device x N
  bad = subprocess.run(base + ["--devices=eight"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "give device counts" in bad.stderr
