"""The paper's masking and target ablations (arXiv 2301.08243, Tables 6 and 7) at the demo's config and budget.

  python experiments/ablations.py [--root=workdir/ablations] [--out=experiments/results]
                                  [--variants=multiblock,rasterized,block,random,pixels] [--steps=N]
                                  [--set=KEY=VALUE ...]

Each variant is the demo (configs/fashion_mnist.py: 3000 steps of 64 on two CPU devices, then its probes)
with one switch changed:
  multiblock   mask.strategy=multiblock, target=representation (the demo itself, the paper's method)
  rasterized   mask.strategy=rasterized (one quadrant the context, the other three the targets)
  block        mask.strategy=block (one target block of scale 0.6, the context its complement)
  random       mask.strategy=random (a random 60% of the patches the target, the context the rest)
  pixels       target=pixels with multi-block masks (MAE-normalised patch pixels instead of representations)
run one after another, each `python -m ijepa_jax.main` in ROOT/<variant>. Resumable: a variant whose
workdir holds eval.json is not rerun, a half-finished one resumes from its checkpoint (main does that).
Then reads every eval.json and writes OUT/ablations.md (our probes next to the paper's numbers, and
whether the paper's ordering holds here), OUT/ablations.png and OUT/ablation_masks.png (examples of each
strategy's masks). Each variant's workdir also holds the run's mask_examples.png, drawn from its sampler.

--steps overrides config.total_steps (a quick smoke run); --set passes any other override to every
variant's config (e.g. --set=probe.max_train=600). The full run is ~5 x 19 minutes on the 2-core machine.

The paper's numbers are ImageNet-1k linear probes on 1% of the labels, ViT-B/16 for 300 epochs (Table 6,
masking) and ViT-L/16 for 500 epochs (Table 7, targets). Ours are Fashion-MNIST probes of a 4-layer
ViT after ~3 epochs, so only the ordering can be compared, not the values; the column to read against
the paper's is our 1%-label probe.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {   # name: (config overrides, the paper's 1% IN-1k linear top-1, the paper's table)
    "multiblock": ((), 54.2, "Table 6 (ViT-B/16, 300 ep)"),
    "rasterized": (("mask.strategy=rasterized",), 15.5, "Table 6 (ViT-B/16, 300 ep)"),
    "block": (("mask.strategy=block",), 20.2, "Table 6 (ViT-B/16, 300 ep)"),
    "random": (("mask.strategy=random",), 17.6, "Table 6 (ViT-B/16, 300 ep)"),
    "pixels": (("target=pixels",), 40.7, "Table 7 (ViT-L/16, 500 ep)"),
}
PAPER_REPRESENTATION_VIT_L = 66.9   # Table 7: representation targets, the pixel row's comparison
MASKING = ("multiblock", "rasterized", "block", "random")
LAST = "I-JEPA target encoder, last layer"   # eval.json's row of the probes compared
RUN_RECORD = "ablation_run.json"   # in each variant's workdir: its minutes, date and machine
COLUMNS = (("lowshot_top1", "1% labels"), ("linear_top1", "linear"), ("linear_last4_top1", "linear, last 4"),
           ("knn_top1", "k-NN"))


def run_variant(name: str, root: str, config: str, steps: int, extra: list[str]) -> str:
  """Runs (or resumes, or skips) one variant; returns its workdir."""
  workdir = os.path.join(root, name)
  if os.path.exists(os.path.join(workdir, "eval.json")):
    print(f"[{name}] done already: {workdir}/eval.json", flush=True)
    return workdir
  switches = {"mask.strategy": "multiblock", "target": "representation"}   # written out: the run's config says it
  switches.update(o.split("=", 1) for o in VARIANTS[name][0])
  args = [sys.executable, "-m", "ijepa_jax.main", f"--config={config}", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in switches.items())]
  if steps > 0:
    args.append(f"--config.total_steps={steps}")
  args += [f"--config.{kv}" for kv in extra]
  print(f"[{name}] {' '.join(args[1:])}", flush=True)
  start = time.time()
  subprocess.run(args, check=True, cwd=REPO)
  seconds = time.time() - start
  print(f"[{name}] finished in {seconds:.0f} s", flush=True)
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import record
  with open(os.path.join(workdir, RUN_RECORD), "w") as f:   # pretraining + probes of this invocation
    json.dump({"seconds": round(seconds), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": record.machine()}, f)
  return workdir


def _pct(value) -> str:
  return "n/a" if value is None else f"{100 * value:.2f}"


def ordering(ours: dict, key: str = "lowshot_top1") -> tuple[bool | None, str]:
  """Whether our masking variants rank as the paper's (multi-block > block > random > rasterized) and
  pixels below representations (multi-block); a sentence saying so."""
  have = [n for n in MASKING if ours.get(n, {}).get(key) is not None]
  sentences, holds = [], []
  if len(have) > 1:
    paper = sorted(have, key=lambda n: -VARIANTS[n][1])
    measured = sorted(have, key=lambda n: -ours[n][key])
    same = paper == measured
    best = measured[0] == "multiblock" if "multiblock" in have else None
    holds.append(same)
    sentences.append(
        f"Masking ({', '.join(have)}): the paper ranks them {' > '.join(paper)}; here {' > '.join(measured)}: "
        + ("the same ordering." if same else "a different ordering"
           + ("" if best is None else (", though multi-block is still best." if best else
                                        ", and multi-block is not the best here.")) ))
  if ours.get("pixels", {}).get(key) is not None and ours.get("multiblock", {}).get(key) is not None:
    below = ours["pixels"][key] < ours["multiblock"][key]
    holds.append(below)
    sentences.append(f"Targets: pixels {_pct(ours['pixels'][key])} vs representations "
                     f"{_pct(ours['multiblock'][key])}: " + ("below, as in the paper." if below else
                                                             "not below: the paper's ordering does not hold here."))
  if not holds:
    return None, "Too few variants finished to compare an ordering."
  return all(holds), " ".join(sentences)


def resolution(ours: dict, key: str = "lowshot_top1") -> str:
  """How far the ranking on the 1%-label probe is resolved by its label draws: each gap between neighbours
  in our order against twice the standard error of the difference of their means (std over the draws /
  sqrt(draws), from eval.json). Empty without those numbers. Pretraining seeds are a second, unmeasured
  source: one run per variant."""
  se = {}
  for n, r in ours.items():
    cell = r.get("table", {}).get(LAST, {}).get("lowshot", {})
    if r.get(key) is not None and cell.get("std") is not None and cell.get("draws"):
      se[n] = cell["std"] / math.sqrt(len(cell["draws"]))
  if len(se) < 2:
    return ""
  ranked = sorted(se, key=lambda n: -ours[n][key])
  gaps = [(a, b, 100 * (ours[a][key] - ours[b][key]), 200 * math.hypot(se[a], se[b]))
          for a, b in zip(ranked, ranked[1:])]
  parts = [f"{a} - {b} {g:.2f} ({'resolved' if g > t else 'not resolved'}: 2 s.e. {t:.2f})" for a, b, g, t in gaps]
  a, b = ranked[0], ranked[-1]
  g, t = 100 * (ours[a][key] - ours[b][key]), 200 * math.hypot(se[a], se[b])
  parts.append(f"first to last, {a} - {b} {g:.2f} ({'resolved' if g > t else 'not resolved'}: 2 s.e. {t:.2f}; "
               f"the paper's spread between those two: {abs(VARIANTS[a][1] - VARIANTS[b][1]):.1f})")
  unresolved = sum(g <= t for _, _, g, t in gaps)
  return ("**How well resolved:** gaps between neighbours on the 1%-label probe against twice the standard "
          "error of their difference (from the probe's label draws): " + "; ".join(parts) + ". "
          + (f"{unresolved} of {len(gaps)} places are within the probe's own noise. " if unresolved else "")
          + "Each variant is one pretraining run, and runs of one config differ by ~1 point between seeds, "
          "which this does not include: more seeds per variant would be needed to call the close places.")


def write_report(root: str, out: str, variants, steps: int, extra: list[str]) -> str:
  ours = {}
  for name in variants:
    path = os.path.join(root, name, "eval.json")
    if os.path.exists(path):
      with open(path) as f:
        ours[name] = json.load(f)
  lines = [
      "# I-JEPA ablations at the demo's budget (Fashion-MNIST), next to the paper's",
      "",
      "`" + " ".join(["python experiments/ablations.py"] +
          ([f"--steps={steps}"] if steps > 0 else []) + [f"--set={kv}" for kv in extra]) + "`",
      "",
      "Each variant: configs/fashion_mnist.py with one switch changed" +
      (f", {steps} steps instead of the demo's." if steps > 0 else " (the demo's 3000 steps of 64).") +
      " Probes of the target encoder, top-1 % on the Fashion-MNIST test split. The paper's column: ImageNet-1k "
      "linear probe on 1% of the labels (Table 6: ViT-B/16, 300 epochs; Table 7: ViT-L/16, 500 epochs, where "
      f"representation targets give {PAPER_REPRESENTATION_VIT_L}). Only orderings compare, not values.",
      "",
      "| variant | switch | paper (IN-1k 1%) | " + " | ".join(h for _, h in COLUMNS) + " | steps | minutes |",
      "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|",
  ]
  records = {}
  for name in variants:
    path = os.path.join(root, name, RUN_RECORD)
    if os.path.exists(path):
      with open(path) as f:
        records[name] = json.load(f)
  for name in variants:
    switch, paper, table = VARIANTS[name]
    r = ours.get(name)
    cells = [_pct(r.get(k)) for k, _ in COLUMNS] if r else ["not run"] * len(COLUMNS)
    lines.append(f"| {name} | {', '.join(switch) or 'default'} | {paper} ({table.split(' (')[0]}) | "
                 + " | ".join(cells) + f" | {r.get('step') if r else ''} | "
                 + (f"{records[name]['seconds'] / 60:.0f}" if name in records else "") + " |")
  if records:
    dates = sorted(r["finished"] for r in records.values())
    lines += ["", f"Run {dates[0]} to {dates[-1]} on {', '.join(sorted({r['machine'] for r in records.values()}))}"
              "; minutes = pretraining + probes of each variant, one after another (other jobs shared the machine: "
              "compare the probes, not the minutes)." + "".join(f" {r['note']}" for r in records.values() if r.get("note"))]
  raw = next((r["raw_pixels_top1"] for r in ours.values() if r.get("raw_pixels_top1") is not None), None)
  if raw is not None:
    lines += ["", f"Raw pixels through the same linear probe: {_pct(raw)}."]
  holds, sentence = ordering(ours)
  lines += ["", "**Does the paper's ordering hold here?** " + {True: "Yes. ", False: "No. ", None: ""}[holds]
            + sentence + " (Compared on the 1%-label probe.)"]
  if (noise := resolution(ours)):
    lines += ["", noise]
  paper = [n for n in sorted(MASKING, key=lambda n: -VARIANTS[n][1])]
  per_probe = []
  for k, header in COLUMNS:
    have = [n for n in paper if ours.get(n, {}).get(k) is not None]
    if len(have) > 1:
      measured = sorted(have, key=lambda n: -ours[n][k])
      per_probe.append(f"{header}: {' > '.join(measured)}" + (" (the paper's)" if measured == [n for n in paper if n in have]
                                                               else ""))
  if per_probe:
    lines += ["", "The masking strategies' order on every probe: " + "; ".join(per_probe) + "."]
  below = [h for k, h in COLUMNS if all(ours.get(n, {}).get(k) is not None for n in ("pixels", "multiblock"))
           and ours["pixels"][k] < ours["multiblock"][k]]
  compared = [h for k, h in COLUMNS if all(ours.get(n, {}).get(k) is not None for n in ("pixels", "multiblock"))]
  if compared:
    lines += ["", f"Pixel targets below representation targets on {len(below)} of {len(compared)} probes"
              + (f" ({'; '.join(below)})." if below else ".")]
  if steps > 0:
    lines += ["", f"This was a smoke run of {steps} steps: the numbers say nothing about the ablation."]
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "ablations.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  _plot(ours, variants, os.path.join(out, "ablations.png"))
  print("\n".join(lines), flush=True)
  return path


def _plot(ours: dict, variants, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  names = list(variants)
  x = np.arange(len(names))
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
  left.bar(x, [VARIANTS[n][1] for n in names], color="0.6")
  left.set_title("paper: IN-1k, 1% labels (Tables 6-7)")
  ours_1pct = [100 * ours[n]["lowshot_top1"] if n in ours and ours[n].get("lowshot_top1") is not None else 0
               for n in names]
  ours_lin = [100 * ours[n]["linear_top1"] if n in ours and ours[n].get("linear_top1") is not None else 0
              for n in names]
  right.bar(x - 0.2, ours_1pct, 0.4, label="1% labels")
  right.bar(x + 0.2, ours_lin, 0.4, label="linear")
  right.set_title("ours: Fashion-MNIST, demo budget")
  right.legend(loc="lower right", fontsize=8)
  for ax in (left, right):
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("top-1 %")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def mask_figure(path: str, grids=(7, 14), examples: int = 3, seed: int = 0) -> str:
  """One row per masking strategy: `examples` draws on each grid (the demo's 7x7; ViT-B/16 at 224 px, the
  paper's ablation: 14x14), context blue, each target block its own warm colour, unused patches white.
  Drawn with the samplers the runs use (ijepa_jax.mask_strategies.make_sampler, the demo's mask config)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  sys.path.insert(0, REPO)
  from ijepa_jax import plots
  from ijepa_jax.mask_strategies import make_sampler
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import fashion_mnist   # the demo's mask settings (min_keep 4, uniform corners)
  mask_cfg = fashion_mnist.get_config().mask
  fig, axes = plt.subplots(len(MASKING), examples * len(grids), figsize=(1.4 * examples * len(grids), 1.5 * len(MASKING)),
                           squeeze=False)
  for r, strategy in enumerate(MASKING):
    mask_cfg.strategy = strategy
    for gi, grid in enumerate(grids):
      sampler = make_sampler(mask_cfg, grid)
      out = sampler(np.random.default_rng([seed, r, gi]), examples)
      colours = np.array([[1, 1, 1], [0.1, 0.3, 1.0]] + [list(c[:3]) for c in
                         matplotlib.colormaps["autumn"](np.linspace(0, 1, sampler.num_targets))])
      for e in range(examples):
        ax = axes[r, gi * examples + e]
        ax.imshow(colours[plots.mask_overlay(grid, out["context_idx"][e], out["target_idx"][e])],
                  interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        if e == 0:
          ax.set_title(f"{grid}x{grid}: ctx {sampler.num_context}, {sampler.num_targets}x{sampler.num_target} tgt",
                       fontsize=6)
      axes[r, 0].set_ylabel(strategy, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", default=os.path.join(REPO, "workdir", "ablations"), help="one workdir per variant")
  p.add_argument("--out", default=os.path.join(REPO, "experiments", "results"))
  p.add_argument("--config", default="configs/fashion_mnist.py")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--steps", type=int, default=-1, help="> 0: override total_steps (smoke runs)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override for every variant (repeatable)")
  p.add_argument("--report_only", action="store_true", help="only read the eval.json files there are")
  a = p.parse_args(argv)
  variants = [v for v in a.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
  if not a.report_only:
    for name in variants:
      run_variant(name, a.root, a.config, a.steps, a.set)
  write_report(a.root, a.out, list(VARIANTS), a.steps, a.set)   # every variant: those not run yet say so
  print(f"Masks of each strategy: {mask_figure(os.path.join(a.out, 'ablation_masks.png'))}", flush=True)


if __name__ == "__main__":
  main()
