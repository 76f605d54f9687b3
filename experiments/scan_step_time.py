"""Step time of the layer scan against the unrolled model, in one run (XLA:CPU unless an accelerator is there).

  python experiments/scan_step_time.py [--config=configs/fashion_mnist.py] [--config.KEY=VALUE ...]
      [--rounds=3] [--steps=5] [--out=experiments/results/scan_step_time.md]

The `model.scan_layers` default is a choice between two memory-equal steps (TPU compiler, README): the
unrolled model with `remat=none`, ~15 minutes to compile for ViT-H/14, and the scanned one with
`remat=dots`, ~1 minute, which recomputes the blocks' non-matmul work in the backward pass. This times
what that recomputation and the loop cost: the four (scan_layers, remat) variants of one config are built
with `train.build` (the step main.py runs) and compiled, then timed in --rounds interleaved rounds of
--steps steps each (so drifts in the machine's speed reach every variant alike) on synthetic images with
the config's masks. Each variant's median step time is reported against the unrolled `none` step's,
with its first step's time (compile + run) and its loss. (The variants compute the same function, but
each draws its own initial parameters: the scan draws the stacked blocks from split keys, so the first
losses of the two layouts differ by ~1e-3; equality on the same parameters is tests/test_scan.py's.)
A Markdown section is appended to --out.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "fashion_mnist.py"),
                                          "Experiment config file (configs/*.py).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per variant and round (after one untimed step).")
_NOTE = flags.DEFINE_string("note", "", "A remark recorded with the results (e.g. what else ran).")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results", "scan_step_time.md"),
                           "Markdown file the results section is appended to.")

VARIANTS = ((False, "none"), (True, "dots"), (True, "none"), (False, "dots"))


def build_variant(config, scan: bool, remat: str, sampler, mesh, batch):
  """((train step, its config), state after one step, seconds of that first step: compile + run, its loss)."""
  import jax
  from ijepa_jax import train
  c = config.copy_and_resolve_references()
  c.model.scan_layers, c.model.remat = scan, remat
  _, _, init, train_step = train.build(c, mesh, sampler, 100_000, 0)
  state = init()
  t = time.perf_counter()
  state, m = train.run_step(train_step, mesh, c, state, batch)
  loss = float(jax.device_get(m["loss"]))
  return (train_step, c), state, time.perf_counter() - t, loss


def measure(config, rounds: int, steps: int) -> list[dict]:
  import jax
  from ijepa_jax import sharding, train
  from ijepa_jax.mask_strategies import make_sampler
  if config.cpu_devices > 0:
    jax.config.update("jax_num_cpu_devices", int(config.cpu_devices))
  train.check_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sampler = make_sampler(config.mask, config.data.image_size // config.model.patch_size)
  b, s, ch = config.batch_size, config.data.image_size, config.data.channels
  rng = np.random.default_rng(config.seed)
  batches = [sharding.global_batch({"images": rng.integers(0, 256, size=(b, s, s, ch), dtype=np.uint8),
                                    "skipped": np.zeros((b,), np.int32), **sampler(rng, b)}, mesh)
             for _ in range(2)]
  built = {}
  for scan, remat in VARIANTS:
    step, state, seconds, loss = build_variant(config, scan, remat, sampler, mesh, batches[0])
    built[scan, remat] = dict(step=step, state=state, compile_s=seconds, loss=loss, times=[])
    print(f"scan_layers={scan} remat={remat}: first step (compile + run) {seconds:.1f} s, "
          f"first loss {loss:.6f}", flush=True)
  for r in range(rounds):
    for key, v in built.items():
      (train_step, c), state = v["step"], v["state"]
      for i in range(steps):
        t = time.perf_counter()
        state, m = train.run_step(train_step, mesh, c, state, batches[i % 2])
        jax.block_until_ready((state, m))
        v["times"].append(time.perf_counter() - t)
      v["state"] = state
    print(f"round {r + 1}/{rounds} done", flush=True)
  base = float(np.median(built[VARIANTS[0]]["times"]))
  return [dict(scan=scan, remat=remat, compile_s=v["compile_s"], loss=v["loss"],
               median_s=float(np.median(v["times"])), iqr_s=float(np.subtract(*np.percentile(v["times"], [75, 25]))),
               ratio=float(np.median(v["times"])) / base, n=len(v["times"]))
          for (scan, remat), v in built.items()]


def markdown(config, rows: list[dict], rounds: int, steps: int, note: str) -> str:
  import jax
  m = config.model
  lines = [f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {m.name} width {m.width}, depth {m.depth}, "
           f"{config.data.image_size // m.patch_size}x{config.data.image_size // m.patch_size} grid, batch "
           f"{config.batch_size}, {config.dtype}", "",
           f"{len(jax.devices())} x {jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.machine()}, "
           f"jax {jax.__version__}; {rounds} interleaved rounds x {steps} steps per variant"
           + (f"; {note}" if note else "") + ".", "",
           "```sh", "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]), "```", "",
           "| scan_layers | remat | first step (compile + run) | step, median (IQR) | vs unrolled `none` | first loss |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['scan']} | {r['remat']} | {r['compile_s']:.1f} s | {1e3 * r['median_s']:.1f} ms "
                 f"({1e3 * r['iqr_s']:.1f}) | {r['ratio']:.3f}x | {r['loss']:.6f} |")
  return "\n".join(lines) + "\n\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _ROUNDS.value < 1 or _STEPS.value < 1:
    raise app.UsageError("--rounds and --steps must be at least 1.")
  config = _CONFIG.value
  rows = measure(config, _ROUNDS.value, _STEPS.value)
  text = markdown(config, rows, _ROUNDS.value, _STEPS.value, _NOTE.value)
  new = not os.path.exists(_OUT.value)
  with open(_OUT.value, "a") as f:
    if new:
      f.write("# Step time: the layer scan against the unrolled model\n\nWritten by "
              "experiments/scan_step_time.py (see its docstring). Ratios hold within one section only.\n\n")
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
