"""What `mask.counts='release'` (the release's token counts, padded) costs next to `mask.counts='fixed'`.

  python experiments/mask_cost.py [--config=configs/vit_h14.py] [--topology=v5p-8] [--tpu_memory=v5p-128]
      [--cpu_model=vit_tiny] [--cpu_batch=16] [--cpu_steps=6] [--out=experiments/results/mask_cost.md]

For the config's mask settings (ViT-H/14: 16x16 grid, 4 targets of scale 0.15-0.2, context 0.85-1.0):
  * the token counts each mode computes on (fixed: the smallest target block, the release's mean
    truncated context; release: padded to the largest target block and the longest context; release
    with a num_context cap: the config's, or each of --caps) next to
    what the release computes on average (simulated: the mean of each per-GPU batch's shortest context
    at mask.reference_batch images, the mean target block);
  * FLOPs per image, analytic (ijepa_jax.flops) for each;
  * FLOPs per device-step from the TPU compiler (compile only, --topology): the scanned model's count
    sees one loop body, so it is compiled unrolled at encoder / predictor depths (1, 1), (2, 1), (1, 2)
    and extrapolated linearly to the config's depths (a step's FLOPs are a constant plus one term per
    block: exact for identical blocks);
  * per-device memory from the TPU compiler at the config's depth (--tpu_memory slice, the config's
    batch, scan_layers=True, remat=dots);
  * CPU step time (XLA:CPU, this machine), both modes interleaved, for a small ViT (--cpu_model) with
    the config's image size, patch and mask settings at --cpu_batch images.
Each compile is a subprocess (`python -m ijepa_jax.memory`), so the compiler's memory is returned.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "vit_h14.py"), "Paper config.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-8", "TPU slice for the FLOP counts (compile only).")
_TPU_MEMORY = flags.DEFINE_string("tpu_memory", "v5p-128", "TPU slice for the memory at full depth ('' to skip).")
_CPU_MODEL = flags.DEFINE_string("cpu_model", "vit_tiny", "Encoder size for the CPU step time ('' to skip).")
_CPU_BATCH = flags.DEFINE_integer("cpu_batch", 16, "Images per CPU step.")
_CPU_STEPS = flags.DEFINE_integer("cpu_steps", 6, "Timed CPU steps per mode (interleaved).")
_CAPS = flags.DEFINE_list("caps", [], "Also counts=release with mask.num_context capped at each of these "
                          "(default: the config's cap, if it has one).")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results", "mask_cost.md"), "Results file.")
MODES = ("fixed", "release")


def modes() -> list[tuple[str, list[str]]]:
  """(name, --config overrides) of each variant measured."""
  out = [(m, [f"--config.mask.counts={m}", "--config.mask.num_context=-1"]) for m in MODES]
  caps = _CAPS.value or ([str(_CONFIG.value.mask.num_context)] if _CONFIG.value.mask.counts == "release"
                         and _CONFIG.value.mask.num_context > 0 else [])
  return out + [(f"release, num_context={c}", ["--config.mask.counts=release", f"--config.mask.num_context={c}"])
                for c in caps]


def _config_file(config) -> str:
  return next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "configs/vit_h14.py")


def memory_cli(overrides: list[str], topology: str, *extra: str) -> str:
  cmd = [sys.executable, "-m", "ijepa_jax.memory", f"--config={_config_file(None)}", f"--topology={topology}",
         *overrides, *extra]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
  return proc.stdout


def compiler_flops(overrides: list[str], topology: str, depth: int, pred_depth: int) -> float:
  out = memory_cli(overrides, topology, "--config.model.scan_layers=False", "--config.model.remat=none",
                   f"--config.model.depth={depth}", f"--config.model.predictor_depth={pred_depth}")
  return float(re.search(r"FLOPs per device per step: compiler ([0-9.e+]+)", out).group(1))


def apply(config, overrides: list[str]) -> None:
  """Sets `--config.a.b=value` overrides on a ConfigDict, as the command line would."""
  for o in overrides:
    path, value = o[len("--config."):].split("=", 1)
    *parents, key = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[key] = type(node[key])(value)


def release_real_counts(sampler, shard: int, batches: int = 2000) -> tuple[float, float]:
  """Mean (context, target) tokens the release computes on: its per-GPU batches of `shard` images."""
  exact = dataclasses.replace(sampler, counts="release", shard_size=shard, num_context=sampler.max_context)
  rng = np.random.default_rng(0)
  ctx, tgt = [], []
  for _ in range(batches):
    out = exact(rng, shard)
    ctx.append(out["context_count"][0])
    tgt.append(out["target_count"][0])
  return float(np.mean(ctx)), float(np.mean(tgt))


def cpu_step_times(config, steps: int) -> dict:
  """Median seconds per step of each variant, interleaved, on one CPU device."""
  import jax
  from ijepa_jax import sharding, train
  from ijepa_jax.masks import MultiBlockSampler
  grid = config.data.image_size // config.model.patch_size
  out, runs = {}, {}
  for mode, overrides in modes():
    c = config.copy_and_resolve_references()
    apply(c, overrides)
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    sampler = MultiBlockSampler.from_config(c.mask, grid)
    _, _, init, step = train.build(c, mesh, sampler, 1000, 10)
    rng = np.random.default_rng(0)
    b, s, ch = c.batch_size, c.data.image_size, c.data.channels

    def batch(sampler=sampler, mesh=mesh, rng=rng):
      images = rng.integers(0, 256, (b, s, s, ch), dtype=np.uint8)
      return sharding.global_batch({"images": images, "skipped": np.zeros(b, np.int32), **sampler(rng, b)}, mesh)

    state = init()
    state, m = train.run_step(step, mesh, c, state, batch())   # compile
    jax.block_until_ready(m)
    runs[mode] = dict(c=c, mesh=mesh, step=step, state=state, batch=batch, times=[])
  for _ in range(steps):
    for mode in runs:
      r = runs[mode]
      x = r["batch"]()
      t = time.perf_counter()
      r["state"], m = train.run_step(r["step"], r["mesh"], r["c"], r["state"], x)
      jax.block_until_ready(m)
      r["times"].append(time.perf_counter() - t)
  for mode in runs:
    out[mode] = float(np.median(runs[mode]["times"]))
  return out


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from ijepa_jax import flops
  from ijepa_jax.memory import parse_tpu_text
  from ijepa_jax.masks import MultiBlockSampler
  from ijepa_jax.models import make_models
  config = _CONFIG.value
  grid = config.data.image_size // config.model.patch_size
  samplers = {}
  for mode, overrides in modes():
    c = config.copy_and_resolve_references()
    apply(c, overrides)
    samplers[mode] = MultiBlockSampler.from_config(c.mask, grid)
  shard = int(config.mask.reference_batch)
  real_ctx, real_tgt = release_real_counts(samplers["fixed"], shard)
  m = samplers["fixed"].num_targets
  counts = {k: (v.num_context, v.num_target) for k, v in samplers.items()}
  analytic = {k: flops.config_flops(config, kc, m, kt)["total"] for k, (kc, kt) in counts.items()}
  analytic_real = flops.config_flops(config, int(round(real_ctx)), m, int(round(real_tgt)))["total"]
  enc, pred = make_models(config.model, config.data.image_size, config.data.channels, jnp.float32)
  lines = [f"# What mask.counts='release' costs ({os.path.basename(_config_file(config))})", "",
           f"Written by `python experiments/mask_cost.py {' '.join(sys.argv[1:])}` (see its docstring) on "
           f"{time.strftime('%Y-%m-%d')}; jax {jax.__version__}. Mask settings: {grid}x{grid} grid, {m} targets of "
           f"scale {tuple(config.mask.target_scale)}, context scale {tuple(config.mask.context_scale)}, "
           f"min_keep {config.mask.min_keep}, corner mode {config.mask.mode}.", "",
           "## Tokens and analytic FLOPs per image (ijepa_jax.flops: matmuls + attention, backward = 2x forward)",
           "", "| what | context tokens | tokens per target block | FLOPs per image | vs fixed |", "|---|---|---|---|---|"]
  for k, (kc, kt) in counts.items():
    lines.append(f"| counts={k}{' (padded)' if k != 'fixed' else ''} | {kc} | {kt} | {analytic[k]:.4g} | "
                 f"{analytic[k] / analytic['fixed']:.2f} |")
  lines.append(f"| the release's real mean (per-GPU batch {shard}, simulated over 2000 batches) | {real_ctx:.1f} | "
               f"{real_tgt:.1f} | {analytic_real:.4g} | {analytic_real / analytic['fixed']:.2f} |")
  lines.append("")
  print("\n".join(lines), flush=True)
  save = lambda: open(_OUT.value, "w").write("\n".join(lines))   # after each section: a stopped run keeps them
  save()

  if _TOPOLOGY.value:
    le, lp = enc.depth, pred.depth
    lines += [f"## TPU compiler FLOPs per device-step ({_TOPOLOGY.value}, the config's batch and mesh, unrolled, "
              f"remat none; extrapolated from depths (1,1), (2,1), (1,2) to ({le}, {lp}))", "",
              "| mode | (1,1) | (2,1) | (1,2) | extrapolated | vs fixed |", "|---|---|---|---|---|---|"]
    full = {}
    for mode, overrides in modes():
      f11, f21, f12 = (compiler_flops(overrides, _TOPOLOGY.value, *d) for d in ((1, 1), (2, 1), (1, 2)))
      full[mode] = f11 + (le - 1) * (f21 - f11) + (lp - 1) * (f12 - f11)
      lines.append(f"| {mode} | {f11:.4g} | {f21:.4g} | {f12:.4g} | {full[mode]:.4g} | "
                   f"{full[mode] / full.get('fixed', full[mode]):.2f} |")
      print(lines[-1], flush=True)
    lines.append("")
    save()
  if _TPU_MEMORY.value:
    lines += [f"## TPU compiler memory per device ({_TPU_MEMORY.value}, batch {config.batch_size}, scan_layers=True, "
              "remat=dots)", "", "| mode | temp | peak | compile |", "|---|---|---|---|"]
    for mode, overrides in modes():
      r = parse_tpu_text(memory_cli(overrides, _TPU_MEMORY.value, "--config.model.scan_layers=True",
                                  "--config.model.remat=dots"))
      refused = r["peak"] is None   # the compiler's RESOURCE_EXHAUSTED: temp is what it said it needs
      peak = "-" if refused else f"{r['peak']:.2f} GiB"
      lines.append(f"| {mode} | {r['temp']:.2f} GiB{' (refused)' if refused else ''} | {peak} | "
                   f"{r['compile_s']:.0f} s |")
      print(lines[-1], flush=True)
    lines.append("")
    save()
  if _CPU_MODEL.value:
    c = config.copy_and_resolve_references()
    c.model.name, c.model.predictor_width, c.model.predictor_depth = _CPU_MODEL.value, 96, 2
    c.model.scan_layers, c.model.remat, c.dtype, c.batch_size = False, "none", "float32", _CPU_BATCH.value
    c.mesh.data, c.mesh.fsdp = 1, 1
    c.mask.reference_batch = _CPU_BATCH.value   # one release per-GPU batch a step
    times = cpu_step_times(c, _CPU_STEPS.value)
    lines += [f"## CPU step time (XLA:CPU, {os.cpu_count()} cores, this machine; {_CPU_MODEL.value} encoder, predictor 96 "
              f"wide x 2, fp32, batch {_CPU_BATCH.value} (= the masks' group), the config's image, patch and masks; median of "
              f"{_CPU_STEPS.value}, modes interleaved)", "", "| mode | seconds per step | vs fixed |", "|---|---|---|"]
    for mode in times:
      lines.append(f"| {mode} | {times[mode]:.3f} | {times[mode] / times['fixed']:.2f} |")
    lines.append("")
    print("\n".join(lines[-4:]), flush=True)
  with open(_OUT.value, "w") as f:
    f.write("\n".join(lines))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
