"""Context buckets for the paper configs: how long a global batch's longest context is under the release's
counts, and what padding each batch to the shortest of a few buckets saves.

  python experiments/buckets.py [--batches=200] [--out=experiments/results/buckets.md]

For each config, `--batches` global batches are drawn with its own sampler (mask.counts=release: every
mask.reference_batch images share one draw, contexts truncated to the group's shortest), as the pipeline
draws them. Per batch: the longest context of all groups (what a bucket must hold). The buckets proposed are
that length's 25th, 50th, 75th percentile and maximum, rounded up to multiples of 8, then the config's
num_context (always last). FLOPs per image (ijepa_jax.flops, analytic: matmuls + attention) at each batch's
bucket, averaged, next to the release's mean (each group at its own truncated context, the targets at their real
size) and to today's single padded shape (num_context).
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
  args = p.parse_args()
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


if __name__ == "__main__":
  main()
