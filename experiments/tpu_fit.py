"""Which Cloud TPU slices each paper config fits, judged by the TPU compiler (compile only, no TPU).

  python experiments/tpu_fit.py [--configs=vit_h14,vit_g16_in22k,...] [--families=v5p,v6e,v4,v5e]
      [--remats=dots,full] [--batch=2048] [--out=experiments/results/tpu_fit.md]

For each config, chip family and remat policy: the smallest slice of that family on which the train
step at global batch --batch fits the chip's HBM, found by compiling upwards from the smallest slice
whose devices could hold the train state (each compile: `python -m ijepa_jax.memory --topology=...`,
one subprocess, so the compiler's memory is returned after each). Every compile is a row of --out
(appended as it finishes, so a long sweep can be stopped and resumed: rows already there are skipped).

Settings: the config's own mesh (FSDP over the slice), `model.scan_layers=True` (one block compiled:
~1-2 minutes a compile on one core instead of ~15 for ViT-H unrolled), so `remat=none` would keep every
layer's intermediates stacked (3.5x the unrolled temp on ViT-H/14); `remat=dots` inside the scan matched
the unrolled `remat=none` on the one point compiled both ways (ViT-H/14, v5p-128: 6.94 GiB temp), and
`remat=full` is the least memory.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = flags.DEFINE_list("configs", ["vit_h14", "vit_g16_in22k", "vit_h16_448"], "configs/NAME.py to sweep.")
_FAMILIES = flags.DEFINE_list("families", ["v5p", "v6e", "v4", "v5e"], "Chip families.")
_REMATS = flags.DEFINE_list("remats", ["dots", "full"], "model.remat policies.")
_BATCH = flags.DEFINE_integer("batch", 2048, "Global batch.")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results", "tpu_fit.md"), "Results file.")

# Slice sizes as Cloud TPU names them (v4/v5p: TensorCores, 2 per chip; v5e/v6e: chips), ascending.
SIZES = {"v5p": [8, 16, 32, 64, 128, 256, 512, 1024], "v4": [8, 16, 32, 64, 128, 256, 512, 1024],
         "v5e": [4, 8, 16, 32, 64, 128, 256], "v6e": [4, 8, 16, 32, 64, 128, 256]}
STATE_GIB = {"vit_h14": 9.64, "vit_h14_in22k": 9.64, "vit_h16_448": 9.65, "vit_g16_in22k": 15.40}
HEADER = ("| config | slice | remat | per-device batch | temp | peak | HBM | fits | lower + compile |\n"
          "|---|---|---|---|---|---|---|---|---|\n")


def _gib(text: str) -> float:
  value, unit = text.split()
  return float(value) * {"GiB": 1, "MiB": 2 ** -10, "KiB": 2 ** -20}[unit]


def compile_once(config: str, slice_name: str, remat: str, batch: int) -> dict:
  cmd = [sys.executable, "-m", "ijepa_jax.memory", f"--config=configs/{config}.py", f"--topology={slice_name}",
         "--config.model.scan_layers=True", f"--config.model.remat={remat}", f"--config.batch_size={batch}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  out = proc.stdout
  if proc.returncode not in (0, 1) or "| peak" not in out:
    return {"error": (proc.stderr or out).strip().splitlines()[-1][:200]}
  row = {"temp": _gib(re.search(r"\| temp \([^|]*\| ([^|]+) \|", out).group(1)),
         "peak": _gib(re.search(r"\| peak [^|]*\| ([^|]+) \|", out).group(1)),
         "fits": bool(re.search(r"^fits:", out, re.M)),
         "per_device": int(re.search(r"\((\d+) per device\)", out).group(1))}
  m = re.search(r"lower ([\d.]+) s, compile ([\d.]+) s", out)
  row["seconds"] = f"{float(m.group(1)):.0f} + {float(m.group(2)):.0f} s"
  return row


def main(argv):
  del argv
  from ijepa_jax import tpu_topologies
  done = open(_OUT.value).read() if os.path.exists(_OUT.value) else ""
  if not done:
    with open(_OUT.value, "w") as f:
      f.write("# Smallest Cloud TPU slices per paper config (TPU compiler, compile only)\n\n"
              f"Written by experiments/tpu_fit.py (see its docstring), libtpu 0.0.42, started "
              f"{time.strftime('%Y-%m-%d')}. Global batch {_BATCH.value}, the config's own mesh, "
              "model.scan_layers=True. Bytes per device.\n\n" + HEADER)
  for config in _CONFIGS.value:
    for family in _FAMILIES.value:
      for remat in _REMATS.value:
        for size in SIZES[family]:
          name = f"{family}-{size}"
          slice_ = tpu_topologies.parse(name)
          hbm = slice_.hbm_bytes / tpu_topologies.GIB
          if STATE_GIB.get(config, 0.0) / slice_.chips > 0.8 * hbm or _BATCH.value % slice_.chips:
            continue  # the train state alone would not leave room, or the batch does not split
          key = f"| {config} | {name} | {remat} |"
          if key in done:
            if key in done and re.search(re.escape(key) + r"[^\n]*\| yes \|", done):
              break
            continue
          r = compile_once(config, name, remat, _BATCH.value)
          line = (f"{key} error: {r['error']} |||||\n" if "error" in r else
                  f"{key} {r['per_device']} | {r['temp']:.2f} GiB | {r['peak']:.2f} GiB | {hbm:.0f} GiB | "
                  f"{'yes' if r['fits'] else 'no'} | {r['seconds']} |\n")
          with open(_OUT.value, "a") as f:
            f.write(line)
          print(line, end="", flush=True)
          if r.get("fits"):
            break


if __name__ == "__main__":
  app.run(main)
