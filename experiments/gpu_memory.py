"""Memory per GPU of each config's train step on 8 NVIDIA GPUs, and the largest per-GPU batch that fits, by XLA's
GPU compiler: compile only, no autotuning, on this CPU-only machine (no GPU ran).

  python experiments/gpu_memory.py [--runs=vit_h14:h100,vit_h14:a100,...] [--gpus=8]
      [--out=experiments/results/gpu_memory.md]

Each run is one `python -m ijepa_jax.memory --config=configs/NAME.py --gpu=GPU --gpus=8 --max_batch` (a
subprocess, so the compiler's memory is returned after each): its first probe is the config's own per-GPU
batch (global batch / 8), then the search doubles or halves and narrows to one image, one compile a probe.
Every run is a row of --out, appended as it finishes (a stopped sweep resumes: rows already there are skipped).
vit_h14_in22k is not run: its train step lowers to vit_h14's very program (tests/test_memory.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from absl import app, flags

import record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = ["vit_h14:h100", "vit_h14:a100", "vit_h14:h200", "vit_b16:h100", "vit_l16:h100", "vit_g16_in22k:h100",
        "vit_h16_448:h100", "vit_b16:a100", "vit_l16:a100", "vit_g16_in22k:a100", "vit_h16_448:a100",
        "vit_b16:h200", "vit_l16:h200", "vit_g16_in22k:h200", "vit_h16_448:h200"]
_RUNS = flags.DEFINE_list("runs", PLAN, "config:gpu pairs, in order.")
_GPUS = flags.DEFINE_integer("gpus", 8, "GPUs in the mesh (one host).")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results", "gpu_memory.md"), "Results file.")
HEADER = ("| config | GPU | remat | config's per-GPU batch | its temp | its peak | HBM per GPU | fits | "
          "largest per-GPU batch that fits | its peak | next batch's peak | probes (compile s) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
PROBE = re.compile(r"^per-device batch (\d+) \(global \d+\): peak (?:([\d.]+ [GMK]iB) \(temp ([\d.]+ [GMK]iB)\)|more "
                   r"than [^:]*) of ([\d.]+ [GMK]iB): (fits|does not fit) \(compile (\d+) s\)", re.M)


def run(config: str, gpu: str) -> str:
  """One --max_batch run as a row of the table."""
  from ijepa_jax.memory import parse_gib
  cmd = [sys.executable, "-m", "ijepa_jax.memory", f"--config=configs/{config}.py", f"--gpu={gpu}",
         f"--gpus={_GPUS.value}", "--max_batch"]
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  print(proc.stdout, flush=True)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  probes = [(int(b), peak, temp, hbm, fits == "fits", int(s)) for b, peak, temp, hbm, fits, s in PROBE.findall(proc.stdout)]
  first = probes[0]
  by_batch = {p[0]: p for p in probes}
  found = re.search(r"^largest per-GPU batch that fits: (\d+) \((\d+) does not", proc.stdout, re.M)
  remat = re.search(r"remat (\w+)", proc.stdout).group(1)
  best, over = (int(found.group(1)), int(found.group(2))) if found else (None, None)
  gib = lambda text: f"{parse_gib(text):.2f}" if text else "refused"
  return (f"| {config} | {gpu} | {remat} | {first[0]} | {gib(first[2])} | {gib(first[1])} | {gib(first[3])} | "
          f"{'yes' if first[4] else 'no'} | {best if best is not None else 'none'} | "
          f"{gib(by_batch[best][1]) if best else '-'} | {over}: {gib(by_batch[over][1]) if over else '-'} | "
          f"{', '.join(f'{p[0]} ({p[5]})' for p in probes)}; {time.time() - t0:.0f} s in all |\n")


def main(argv):
  del argv
  done = open(_OUT.value).read() if os.path.exists(_OUT.value) else ""
  first = True
  for pair in _RUNS.value:
    config, gpu = pair.split(":")
    if re.search(rf"^\| {config} \| {gpu} \|", done, re.M):
      continue
    if first and HEADER not in done:
      from ijepa_jax.memory import gpu_versions
      record.append(_OUT.value, f"\n## {record.utc_date()}: {_GPUS.value} GPUs, XLA GPU compiler, compile only, no "
                    f"autotuning\n\nMachine: {record.machine()}; load {record.loadavg()} at the start; "
                    f"{gpu_versions()}; ptxas from {shutil.which('ptxas')}.\n\n" + HEADER)
    first = False
    print(f"=== {config} on {_GPUS.value} x {gpu}", flush=True)
    record.append(_OUT.value, run(config, gpu))


if __name__ == "__main__":
  app.run(main)
