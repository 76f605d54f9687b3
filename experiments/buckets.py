"""Context buckets for the paper configs: how long a global batch's longest context is under the release's
counts, and what padding each batch to the shortest of a few buckets saves.

  python experiments/buckets.py [--batches=200] [--out=experiments/results/buckets.md]
  python experiments/buckets.py --topology=v5p-128 --configs=vit_h14 [--out=...]   (needs the [tpu] extra)

For each config, `--batches` global batches are drawn with its own sampler (mask.counts=release: every
mask.reference_batch images share one draw, contexts truncated to the group's shortest), as the pipeline
draws them. Per batch: the longest context of all groups (what a bucket must hold). The buckets proposed are
that length's 25th, 50th, 75th percentile and maximum, rounded up to multiples of 8, then the config's
num_context (always last). FLOPs per image (ijepa_jax.flops, analytic: matmuls + attention) at each batch's
bucket, averaged, next to the release's mean (each group at its own truncated context, the targets at their real
size) and to today's single padded shape (num_context).

With --topology (compile only, no TPU): each bucket's train step is compiled for that slice by the TPU
compiler and its FLOPs per image counted by the compiler (cost_model.time_estimate: unrolled at depths (1, 1),
(2, 1), (1, 2), extrapolated), weighted by how often the simulated batches use the bucket, next to the
release's analytic mean; also the cost model's step time per bucket (a lower bound, not a measurement).
Appended to --out as its own section.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIGS = ("vit_b16", "vit_l16", "vit_h14", "vit_h16_448", "vit_h14_in22k", "vit_g16_in22k")


def load(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def simulate(config, batches: int) -> dict:
  from ijepa_jax.mask_strategies import make_sampler
  grid = config.data.image_size // config.model.patch_size
  c = config.copy_and_resolve_references()
  c.mask.context_buckets = ()
  sampler = make_sampler(c.mask, grid)
  group = sampler.group_size
  longest, real_context, real_target = [], [], []
  for step in range(batches):
    drawn = [sampler(np.random.default_rng([11, step, g]), group) for g in range(config.batch_size // group)]
    longest.append(max(int(d["context_count"].max()) for d in drawn))
    real_context += [float(d["context_count"].mean()) for d in drawn]
    real_target += [float(d["target_count"].mean()) for d in drawn]
  return dict(sampler=sampler, longest=np.asarray(longest), real_context=float(np.mean(real_context)),
              real_target=float(np.mean(real_target)))


def propose(longest: np.ndarray, num_context: int) -> tuple[int, ...]:
  qs = [int(math.ceil(np.percentile(longest, q) / 8) * 8) for q in (25, 50, 75, 100)]
  return tuple(sorted({min(q, num_context) for q in qs} | {num_context}))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--out", default=os.path.join(REPO, "experiments/results/buckets.md"))
  p.add_argument("--topology", default="", help="e.g. v5p-128: the compiler's FLOPs per bucket (appended)")
  p.add_argument("--configs", default=",".join(CONFIGS))
  args = p.parse_args()
  if args.topology:
    return compiled(args)
  from ijepa_jax import flops
  lines = [f"# Context buckets for the paper configs ({datetime.date.today()}, `python experiments/buckets.py "
           f"--batches={args.batches}`)", "",
           "Analytic FLOPs per image (ijepa_jax.flops: matmuls + attention, forward and backward), from "
           f"{args.batches} simulated global batches per config drawn as the pipeline draws them. 'release' = the "
           "release's own mean (each per-GPU group at its truncated context, targets at their real size); "
           "'one shape' = every batch padded to num_context (no buckets); 'buckets' = each batch at the "
           "shortest bucket holding its longest context.", "",
           "| config | batch / group | longest context per batch: mean, p50, p90, max | num_context | buckets "
           "| release | one shape | buckets | buckets / release | one shape / release |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name in CONFIGS:
    config = load(name)
    sim = simulate(config, args.batches)
    s, longest = sim["sampler"], sim["longest"]
    buckets = propose(longest, s.num_context)
    f = lambda ctx, tgt: flops.config_flops(config, ctx, s.num_targets, tgt)["total"]  # noqa: E731
    release = f(sim["real_context"], sim["real_target"])
    one = f(s.num_context, s.num_target)
    chosen = [next(b for b in buckets if b >= n) for n in longest]
    bucketed = float(np.mean([f(b, s.num_target) for b in chosen]))
    lines.append(f"| {name} | {config.batch_size} / {s.group_size} | {longest.mean():.1f}, "
                 f"{np.median(longest):.0f}, {np.percentile(longest, 90):.0f}, {longest.max()} | {s.num_context} | "
                 f"{', '.join(map(str, buckets))} | {release:.3g} | {one:.3g} | {bucketed:.3g} | "
                 f"{bucketed / release:.2f}x | {one / release:.2f}x |")
    print(lines[-1], flush=True)
  lines += ["", "The buckets set in each config (mask.context_buckets) are the ones proposed here; the largest is "
            "always num_context, so the largest program (and its memory) is the one-shape program of before."]
  with open(args.out, "w") as fh:
    fh.write("\n".join(lines) + "\n")


def compiled(args) -> None:
  """The --topology section: per config, each bucket compiled by the TPU compiler."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import record
  from ijepa_jax import cost_model, flops
  for name in args.configs.split(","):
    config = load(name)
    sim = simulate(config, args.batches)
    s, longest = sim["sampler"], sim["longest"]
    buckets = tuple(int(b) for b in config.mask.context_buckets) or (s.num_context,)
    share = {b: float(np.mean([next(x for x in buckets if x >= n) == b for n in longest])) for b in buckets}
    release = flops.config_flops(config, sim["real_context"], s.num_targets, sim["real_target"])["total"]
    lines = [f"\n## {name} on a {args.topology} by the TPU compiler ({record.utc_date()})\n",
             f"`python experiments/buckets.py --topology={args.topology} --configs={name} --batches={args.batches}`; "
             f"batch {config.batch_size}, {config.dtype}, remat={config.model.remat}; {record.machine()}, load "
             f"{record.loadavg()} before. FLOPs per image as the compiler counts them (the unrolled step at depths "
             "(1, 1), (2, 1), (1, 2), extrapolated) against the release's analytic mean; the cost model's step time "
             "is a lower bound, not a measurement.\n",
             "| context bucket | share of batches | compiler FLOPs / image | analytic FLOPs / image | compiler / release "
             "| step (s) | images/s per chip |", "|---|---|---|---|---|---|---|"]
    weighted = 0.0
    for b in buckets:
      c = config.copy_and_resolve_references()
      c.mask.num_context, c.mask.context_buckets = b, ()
      t = cost_model.time_estimate(c, args.topology)
      weighted += share[b] * t["compiler_flops_per_image"]
      lines.append(f"| {b} | {100 * share[b]:.1f}% | {t['compiler_flops_per_image']:.4g} | {t['flops_per_image']:.4g} "
                   f"| {t['compiler_flops_per_image'] / release:.2f}x | {t['step_s']:.4f} | "
                   f"{t['images_per_s_per_chip']:.0f} |")
      print(lines[-1], flush=True)
    lines.append(f"\nWeighted by use: {weighted:.4g} FLOPs per image by the compiler, {weighted / release:.2f}x the "
                 f"release's analytic mean ({release:.4g}).\n")
    record.append(args.out, "\n".join(lines))


if __name__ == "__main__":
  main()
