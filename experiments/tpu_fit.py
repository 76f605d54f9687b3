"""Which Cloud TPU slices each paper config fits, judged by the TPU compiler (compile only, no TPU).

  python experiments/tpu_fit.py [--configs=vit_h14,vit_g16_in22k,...] [--families=v5p,v6e,v4,v5e]
      [--remats=dots,full] [--batch=2048] [--out=experiments/results/tpu_fit.md]
  python experiments/tpu_fit.py --largest_on=v5p-128,v6e-256 [--configs=...] [--remats=...]

For each config, chip family and remat policy: the smallest slice of that family on which the train
step at global batch --batch fits the chip's HBM, found by compiling upwards from the smallest slice
whose devices could hold the train state (each compile: `python -m ijepa_jax.memory --topology=...`,
one subprocess, so the compiler's memory is returned after each). Every compile is a row of --out
(appended as it finishes, so a long sweep can be stopped and resumed: rows already there are skipped).

Settings: the config's own mesh (FSDP over the slice), `model.scan_layers=True` (one block compiled:
~1-2 minutes a compile on one core instead of ~15 for ViT-H unrolled), so `remat=none` would keep every
layer's intermediates stacked (3.5x the unrolled temp on ViT-H/14); `remat=dots` inside the scan matched
the unrolled `remat=none` on the one point compiled both ways (ViT-H/14, v5p-128: 6.94 GiB temp), and
`remat=full` is the least memory. A step the compiler refuses (RESOURCE_EXHAUSTED: its temporaries
alone exceed the HBM) is a 'no' row with the temporaries the compiler said it needs. vit_h14_in22k
is not among the default configs: its train step lowers to vit_h14's very program (tests/test_memory.py).

With --largest_on: for each config, slice and remat, the largest per-device batch that fits (rows in
experiments/results/tpu_batch.md; see largest_batches).
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
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results", "tpu_fit.md"),
                           "Results file (with --largest_on: experiments/results/tpu_batch.md unless given).")
_LARGEST_ON = flags.DEFINE_list("largest_on", [], "Slices (v5p-128,v6e-256): find the largest per-device batch "
                                "that fits each instead of the smallest slice.")

# Slice sizes as Cloud TPU names them (v4/v5p: TensorCores, 2 per chip; v5e/v6e: chips), ascending.
SIZES = {"v5p": [8, 16, 32, 64, 128, 256, 512, 1024], "v4": [8, 16, 32, 64, 128, 256, 512, 1024],
         "v5e": [4, 8, 16, 32, 64, 128, 256], "v6e": [4, 8, 16, 32, 64, 128, 256]}
STATE_GIB = {"vit_h14": 9.64, "vit_h14_in22k": 9.64, "vit_h16_448": 9.65, "vit_g16_in22k": 15.40}
HEADER = ("| config | slice | remat | per-device batch | temp | peak | HBM | fits | lower + compile |\n"
          "|---|---|---|---|---|---|---|---|---|\n")


def error_line(text: str) -> str:
  """The line that names the exception (`SomeError: ...`), not the notes JAX prints after it; else the last."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
  return (named or lines or ["(no output)"])[-1][:200].replace("|", "/")


def compile_once(config: str, slice_name: str, remat: str, batch: int | None = None,
                 per_device_batch: int | None = None, num_slices: int = 1) -> dict:
  """One `python -m ijepa_jax.memory` run: {'temp', 'peak' (None when the compiler ran out of HBM and
  so reported no analysis), 'fits', 'per_device', 'seconds'} in GiB, or {'error'}."""
  cmd = [sys.executable, "-m", "ijepa_jax.memory", f"--config=configs/{config}.py", f"--topology={slice_name}",
         f"--num_slices={num_slices}", "--config.model.scan_layers=True", f"--config.model.remat={remat}"]
  cmd += [f"--per_device_batch={per_device_batch}"] if per_device_batch else [f"--config.batch_size={batch}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  out = proc.stdout
  if proc.returncode != 0 or ("| peak" not in out and "temporaries alone need" not in out):
    return {"error": error_line(proc.stderr or out)}
  from ijepa_jax.memory import parse_text
  row = parse_text(out)
  row["per_device"] = int(re.search(r"\((\d+) per device\)", out).group(1))
  m = re.search(r"lower ([\d.]+) s, compile ([\d.]+) s", out)
  row["seconds"] = f"{float(m.group(1)):.0f} + {float(m.group(2)):.0f} s"
  return row


def _row(key: str, r: dict, hbm: float) -> str:
  if "error" in r:
    return f"{key} error: {r['error']} |||||\n"
  peak = f"{r['peak']:.2f} GiB" if r["peak"] is not None else "refused: out of HBM"
  temp = f"{r['temp']:.2f} GiB" + ("" if r["peak"] is not None else " (compiler's need)")
  return (f"{key} {r['per_device']} | {temp} | {peak} | {hbm:.0f} GiB | {'yes' if r['fits'] else 'no'} | "
          f"{r['seconds']} |\n")


def _append(path: str, line: str) -> None:
  with open(path, "a") as f:
    f.write(line)
  print(line, end="", flush=True)


def smallest_slices(out: str) -> None:
  from ijepa_jax import tpu_topologies
  done = open(out).read() if os.path.exists(out) else ""
  if not done:
    with open(out, "w") as f:
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
            if re.search(re.escape(key) + r"[^\n]*\| yes \|", done):
              break
            continue
          r = compile_once(config, name, remat, _BATCH.value)
          _append(out, _row(key, r, hbm))
          if r.get("fits"):
            break


def largest_batches(out: str) -> None:
  """Per config, slice and remat: the largest per-device batch that fits (search_largest), starting
  from the per-device batch of --batch."""
  from ijepa_jax import tpu_topologies
  from ijepa_jax.memory import parse_gib
  if not os.path.exists(out):
    with open(out, "w") as f:
      f.write("# Largest per-device batch per paper config and slice (TPU compiler, compile only)\n\n"
              f"Written by `experiments/tpu_fit.py --largest_on=...` (see its docstring), libtpu 0.0.42, started "
              f"{time.strftime('%Y-%m-%d')}. The config's own mesh, model.scan_layers=True. Bytes per device; "
              "each row is one compile, the largest 'yes' of a group is its answer.\n\n" + HEADER)
  for config in _CONFIGS.value:
    for name in _LARGEST_ON.value:
      slice_ = tpu_topologies.parse(name)
      hbm = slice_.hbm_bytes / tpu_topologies.GIB
      for remat in _REMATS.value:
        rows = {}
        for line in open(out).read().splitlines():   # resume: the compiles already recorded
          m = re.match(re.escape(f"| {config} | {name} | {remat} |") + r" (\d+) \| ([^|]+) \| ([^|]+) \|[^|]+\| (yes|no) \|", line)
          if m:
            rows[int(m.group(1))] = {"peak": None if "refused" in m.group(3) else parse_gib(m.group(3).strip()),
                                     "temp": parse_gib(m.group(2).split(" (")[0].strip()), "fits": m.group(4) == "yes"}

        def measure(p):
          r = compile_once(config, name, remat, per_device_batch=p)
          _append(out, _row(f"| {config} | {name} | {remat} |", r, hbm))
          return r if "error" not in r else {"fits": False, "peak": None, "temp": None}

        search_largest(measure, max(1, _BATCH.value // slice_.chips), hbm, rows)


def search_largest(measure, p0: int, hbm: float, rows: dict) -> int | None:
  """The largest per-device batch p that fits (None if p0 does not), to within 1/16 of a linear guess.
  measure(p) compiles batch p: {'fits', 'peak' (GiB or None)}; rows ({p: that}) holds the compiles
  so far (a resumed search starts from them) and gains the new ones. Temp grows about linearly with
  the batch, so p0 and 4 p0 give a line and its crossing with the HBM a guess; then a walk up in
  steps of guess/16 while batches fit, and a bisection between the largest batch that fits and the
  smallest larger one that does not, to within a step (the compiler's memory is not always monotone
  in the batch, so the answer is the last 'yes' found, not a bound)."""
  def run(p):
    if p not in rows:
      rows[p] = measure(p)
    return rows[p]

  def bracket():
    yes = max(p for p, r in rows.items() if r["fits"])
    return yes, min((p for p, r in rows.items() if not r["fits"] and p > yes), default=None)

  a, b = run(p0), run(4 * p0)
  if not a["fits"]:
    return None
  if b["fits"] and a["peak"] is not None and b["peak"] is not None and b["peak"] > a["peak"]:
    guess = int(4 * p0 + (hbm - b["peak"]) / ((b["peak"] - a["peak"]) / (3 * p0)))
  else:
    guess = 2 * p0
  step = max(1, guess // 16)
  yes, no = bracket()
  p = max(yes + step, guess // step * step)
  if no is None or p < no:
    run(p)
  yes, no = bracket()
  while no is None:                       # walk up while batches fit
    run(yes + step)
    yes, no = bracket()
  while no - yes > step:
    run((yes + no) // 2)
    yes, no = bracket()
  return yes


def main(argv):
  del argv
  if _LARGEST_ON.value:
    largest_batches(_OUT.value if flags.FLAGS["out"].present else
                    os.path.join(REPO, "experiments", "results", "tpu_batch.md"))
  else:
    smallest_slices(_OUT.value)


if __name__ == "__main__":
  app.run(main)
