"""Mask statistics: our MultiBlockSampler (counts=fixed in both corner modes, and counts=release) next to
the PyTorch release's MaskCollator.

  python experiments/mask_stats.py [--release=/path/to/ijepa] [--out=experiments/results] [--batches=200]

Why this exists: ijepa_jax/masks.py reimplements the release's multi-block sampler with static shapes
(a fixed number of context tokens and of tokens per target block) and offers a `uniform` mode without
the release's corner off-by-one. tests/test_masks.py checks the geometry batch by batch; this script
looks at the distributions over many batches and puts them next to the release's own collator:
  * coverage heat maps: per patch, the fraction of images in which it is a context token and in which
    it is a target token (a token the predictor is asked for: for ours, the kept subset of the block);
  * histograms of the target block extent (h x w, and h and w) and tokens per block, and of the context
    length (the release truncates every context in a batch to the batch's shortest, so its length
    changes per batch; ours is one fixed count, by default the release's mean truncated length);
for the ViT-H/14 grid (224 px / 14 = 16x16, the release's mask defaults, batch 128) and the demo grid
(configs/fashion_mnist.py: 7x7, min_keep 4). Writes mask_coverage_<setting>.png,
mask_histograms_<setting>.png and mask_stats.md under --out.

The release is CC BY-NC 4.0: it is imported at run time from --release and nothing of it is copied
here. Without --release only our two modes are drawn; a missing checkout or a missing torch is one
line saying so, and the script goes on with ours.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import logging
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPI = 80


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  title: str
  config: str          # configs/*.py whose mask settings are used
  image_size: int
  patch_size: int
  batch: int


SETTINGS = (
    Setting("vith14", "ViT-H/14, 224 px: 16x16 grid (the release's mask defaults)", "vit_h14.py", 224, 14, 128),
    Setting("demo", "demo, 112 px / patch 16: 7x7 grid (configs/fashion_mnist.py, min_keep 4)",
            "fashion_mnist.py", 112, 16, 128),
)


@dataclasses.dataclass
class Stats:
  """Accumulated over batches for one sampler on one grid."""
  label: str
  grid: int
  images: int = 0
  context_hits: np.ndarray = None     # [g*g] images in which the patch is a context token
  target_hits: np.ndarray = None      # [g*g] images in which the patch is a target token
  extent_hits: np.ndarray = None      # [g*g] images in which the patch is inside a target block
  block_h: list = dataclasses.field(default_factory=list)     # one per batch (one size per batch)
  block_w: list = dataclasses.field(default_factory=list)
  block_tokens: list = dataclasses.field(default_factory=list)  # tokens per target block, per batch
  context_len: list = dataclasses.field(default_factory=list)   # context tokens per image, per batch
  target_edge: int = 0                # images with a target token in the last row or column
  context_edge: int = 0               # images with a context token in the last row or column
  seconds: float = 0.0
  note: str = ""

  def __post_init__(self):
    n = self.grid * self.grid
    self.context_hits = np.zeros(n, np.int64)
    self.target_hits = np.zeros(n, np.int64)
    self.extent_hits = np.zeros(n, np.int64)

  def add(self, context_idx, target_idx, block_hw, extent=None):
    """context_idx [B, Kc], target_idx [B, M, Kt] (numpy), block_hw: the batch's target block (h, w),
    extent: bool [B, M, g, g] of the whole blocks (None: the target tokens are the whole blocks)."""
    b, n, g = context_idx.shape[0], self.grid * self.grid, self.grid
    if extent is None:
      extent = np.zeros((b, n), bool)
      np.put_along_axis(extent, target_idx.reshape(b, -1), True, axis=1)
    self.extent_hits += extent.reshape(b, -1, n).any(1).sum(0)
    edge = np.zeros(n, bool)
    edge.reshape(g, g)[-1, :] = True
    edge.reshape(g, g)[:, -1] = True
    for idx, hits, attr in ((context_idx.reshape(b, -1), self.context_hits, "context_edge"),
                            (target_idx.reshape(b, -1), self.target_hits, "target_edge")):
      mask = np.zeros((b, n), bool)
      np.put_along_axis(mask, idx, True, axis=1)   # union over blocks: overlaps count once per image
      hits += mask.sum(0)
      setattr(self, attr, getattr(self, attr) + int((mask & edge).any(1).sum()))
    self.images += b
    self.block_h.append(block_hw[0])
    self.block_w.append(block_hw[1])
    self.block_tokens.append(target_idx.shape[-1])
    self.context_len.append(context_idx.shape[-1])

  def summary(self) -> dict:
    g = self.grid
    return dict(
        sampler=self.label, images=self.images, batches=len(self.block_h),
        block_h=float(np.mean(self.block_h)), block_w=float(np.mean(self.block_w)),
        block_area=float(np.mean(np.multiply(self.block_h, self.block_w))),
        block_tokens=float(np.mean(self.block_tokens)),
        context_len=float(np.mean(self.context_len)),
        context_len_se=float(np.std(self.context_len) / np.sqrt(len(self.context_len))),
        block_area_se=float(np.std(np.multiply(self.block_h, self.block_w)) / np.sqrt(len(self.block_h))),
        context_len_range=(int(np.min(self.context_len)), int(np.max(self.context_len))),
        target_edge=self.target_edge / self.images, context_edge=self.context_edge / self.images,
        target_last_row=float(self.target_map()[g - 1].mean()),
        target_last_col=float(self.target_map()[:, g - 1].mean()),
        seconds=self.seconds)

  def context_map(self):
    return (self.context_hits / max(self.images, 1)).reshape(self.grid, self.grid)

  def target_map(self):
    return (self.target_hits / max(self.images, 1)).reshape(self.grid, self.grid)

  def extent_map(self):
    return (self.extent_hits / max(self.images, 1)).reshape(self.grid, self.grid)


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# ============================================================================ samplers
def draw_ours(setting: Setting, mode: str, batches: int, seed: int = 0) -> tuple[Stats, object]:
  """Our sampler with counts=fixed and the setting's config's other mask settings, `mask.mode` overridden;
  seeded per batch as the pipeline."""
  from ijepa_jax.masks import MultiBlockSampler

  @dataclasses.dataclass(frozen=True)
  class Recording(MultiBlockSampler):
    """Also keeps each batch's block corners and size: the output holds only the kept tokens."""
    blocks: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    def _target_indices(self, rng, top, left, size):
      self.blocks.append((top.copy(), left.copy(), size))
      return super()._target_indices(rng, top, left, size)

  mask = load_config(setting.config).mask
  mask.mode, mask.counts, mask.num_context = mode, "fixed", -1   # the fixed layout, its default context length
  grid = setting.image_size // setting.patch_size
  sampler = Recording.from_config(mask, grid)
  stats = Stats(f"ours, counts=fixed, mode={mode}", grid)
  start = time.perf_counter()
  for i in range(batches):
    out = sampler(np.random.default_rng([seed, i]), setting.batch)
    top, left, size = sampler.blocks.pop()
    stats.add(out["context_idx"], out["target_idx"], size, sampler._rects(top, left, size))
  stats.seconds = time.perf_counter() - start
  stats.note = (f"fixed counts: {sampler.num_context} context tokens, {sampler.num_target} tokens per block"
                + (" (raster-order prefix of the available context)" if mode == "release"
                   else " (random subset of the available context)"))
  return stats, sampler


def draw_ours_release_counts(setting: Setting, batches: int, seed: int = 0) -> Stats:
  """Our sampler with mask.counts=release (corner mode release, no cap): the release's collator at static
  shapes; each batch one group of `setting.batch` images, its real lengths read from the counts."""
  from ijepa_jax.masks import MultiBlockSampler
  mask = load_config(setting.config).mask
  mask.mode, mask.counts, mask.num_context, mask.reference_batch = "release", "release", -1, setting.batch
  grid = setting.image_size // setting.patch_size
  sampler = MultiBlockSampler.from_config(mask, grid)
  stats = Stats("ours, counts=release", grid)
  start = time.perf_counter()
  for i in range(batches):
    out = sampler(np.random.default_rng([seed, i]), setting.batch)
    kc, kt = int(out["context_count"][0]), int(out["target_count"][0])
    tgt = out["target_idx"][:, :, :kt]
    r, c = np.divmod(tgt[0, 0], grid)
    stats.add(out["context_idx"][:, :kc], tgt, (int(np.ptp(r)) + 1, int(np.ptp(c)) + 1))
  stats.seconds = time.perf_counter() - start
  stats.note = (f"the release's counts, padded to {sampler.num_context} context tokens and {sampler.num_target} "
                "tokens per block (statistics over the real tokens)")
  return stats


class _Count(logging.Handler):
  """Counts the release collator's 'decreasing acceptable-regions' fallbacks (and hides them)."""

  def __init__(self):
    super().__init__()
    self.count = 0

  def emit(self, record):
    if "acceptable-regions" in record.getMessage():
      self.count += 1


def draw_release(collator_cls, torch, setting: Setting, mask, batches: int, seed: int = 0) -> Stats:
  """The release's MaskCollator with the same settings, called as its DataLoader would."""
  grid = setting.image_size // setting.patch_size
  collator = collator_cls(
      input_size=(setting.image_size, setting.image_size), patch_size=setting.patch_size,
      enc_mask_scale=tuple(mask.context_scale), pred_mask_scale=tuple(mask.target_scale),
      aspect_ratio=tuple(mask.target_aspect), nenc=1, npred=int(mask.num_targets),
      min_keep=int(mask.min_keep), allow_overlap=False)
  torch.manual_seed(seed)     # block positions come from torch's global generator
  batch = [(torch.zeros(()), 0)] * setting.batch   # (image, label) pairs: only their count matters
  stats = Stats(f"release MaskCollator (min_keep {mask.min_keep})", grid)
  root = logging.getLogger()
  handler, level = _Count(), root.level
  root.addHandler(handler)
  root.setLevel(logging.WARNING)
  saved = [(h, h.level) for h in root.handlers if h is not handler]
  for h, _ in saved:
    h.setLevel(logging.CRITICAL)
  start = time.perf_counter()
  try:
    for _ in range(batches):
      _, masks_enc, masks_pred = collator(batch)
      ctx = masks_enc[0].numpy()                          # [B, Kc]: truncated to the batch's shortest
      tgt = np.stack([m.numpy() for m in masks_pred], 1)  # [B, M, Kt]: whole blocks
      r, c = np.divmod(tgt[0, 0], grid)
      stats.add(ctx, tgt, (int(np.ptp(r)) + 1, int(np.ptp(c)) + 1))
  finally:
    root.removeHandler(handler)
    root.setLevel(level)
    for h, lvl in saved:
      h.setLevel(lvl)
  stats.seconds = time.perf_counter() - start
  stats.note = (f"per-batch truncated context; {handler.count} 'decreasing acceptable-regions' "
                f"fallbacks in {stats.images} images")
  return stats


def analytic_block(sampler) -> tuple[float, float, float]:
  """Mean (h, w, h*w) of the target block over the uniform draw that sets scale and aspect together."""
  hw = np.array([sampler._block_size(u, sampler.target_scale, sampler.target_aspect)
                 for u in np.linspace(0.0, 1.0, 20001)])
  return float(hw[:, 0].mean()), float(hw[:, 1].mean()), float(np.prod(hw, 1).mean())


# ============================================================================ plots
def plot_coverage(path: str, setting: Setting, all_stats: list[Stats]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = len(all_stats)
  fig, axes = plt.subplots(rows, 3, figsize=(9.0, 2.9 * rows), squeeze=False)
  for row, st in zip(axes, all_stats):
    for ax, (what, grid_map) in zip(row, (("context tokens", st.context_map()),
                                          ("target tokens", st.target_map()),
                                          ("inside a target block", st.extent_map()))):
      im = ax.imshow(grid_map, vmin=0.0, vmax=1.0, cmap="viridis")
      ax.set_title(f"{st.label}\n{what}: mean {grid_map.mean():.2f}, last row/col "
                   f"{np.concatenate([grid_map[-1], grid_map[:, -1]]).mean():.2f}", fontsize=7)
      ax.set_xticks([])
      ax.set_yticks([])
      fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
  fig.suptitle("Fraction of images in which a patch is a context token, a target token (predicted), "
               f"inside a target block\n{setting.title}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def plot_histograms(path: str, setting: Setting, all_stats: list[Stats]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 4, figsize=(12, 3.0))
  panels = (("target block extent h*w (tokens)", lambda s: np.multiply(s.block_h, s.block_w)),
            ("target block height h", lambda s: s.block_h),
            ("target block width w", lambda s: s.block_w),
            ("context tokens per image", lambda s: s.context_len))
  styles = {"ours, counts=fixed, mode=release": ("tab:blue", "-"),
            "ours, counts=fixed, mode=uniform": ("tab:orange", "--"), "ours, counts=release": ("tab:red", ":")}
  for ax, (title, values) in zip(axes, panels):
    data = [np.asarray(values(s)) for s in all_stats]
    lo, hi = min(d.min() for d in data), max(d.max() for d in data)
    bins = np.arange(lo - 0.5, hi + 1.5, max(1, (hi - lo + 1) // 40))
    for s, d in zip(all_stats, data):
      color, style = styles.get(s.label, ("tab:green", "-"))
      if ax is axes[3] and s.label.startswith("ours, counts=fixed"):   # one fixed count: a line, not a spike
        ax.axvline(d[0], color=color, linestyle=style, label=f"{s.label}: fixed {d[0]}")
      else:
        ax.hist(d, bins=bins, histtype="step", density=True, linewidth=1.2, color=color, linestyle=style,
                label=s.label)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
  for s in all_stats:          # kept tokens per block: fixed for ours, the whole block for the release
    if s.label.startswith("ours, counts=fixed"):
      axes[0].axvline(s.block_tokens[0], linestyle=":", color="gray")
  axes[0].set_xlabel(f"dotted: tokens per block kept by ours ({all_stats[0].block_tokens[0]}, fixed)", fontsize=7)
  axes[3].set_xlabel("release: per-batch truncated length", fontsize=7)
  axes[1].legend(fontsize=6, loc="upper left")
  axes[3].legend(fontsize=6, loc="upper right")
  fig.suptitle(f"Per batch (one block size and one context length per batch): {setting.title}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


# ============================================================================ report
def write_markdown(path: str, results, header: list[tuple[str, str]], command: str) -> None:
  lines = ["# Mask statistics: our sampler in both modes vs the release's MaskCollator", ""]
  lines += [f"- {k}: {v}" for k, v in header]
  lines += [f"- command: `{command}`", "",
            "Per image: context tokens are the indices the context encoder gets, target tokens the indices "
            "the predictor is asked for (ours keeps a random subset of `num_target` tokens of larger blocks; "
            "the release returns whole blocks). 'last row/col' = the image has at least one such token in "
            "the grid's last row or last column. The block extent and the context length are drawn once per "
            "batch.", "",
            "What to expect: in the release (and `mode=release`) the context block's side, drawn from scale "
            "(0.85, 1.0) with aspect 1, is clamped to g-1 and its corner drawn from U{0..0}: it is always the "
            "top-left (g-1)x(g-1) square, and truncating every context to the batch's shortest keeps its "
            "raster-order prefix, so context tokens crowd the top rows. Target corners come from "
            "U{0..g-h-1}, so no block ever reaches the last row or column. Ours keeps the block geometry and "
            "fixes the counts: `num_target` = the smallest block area, `num_context` = floor of the mean "
            "truncated length over 64 simulated batches of `reference_batch` images (ijepa_jax/masks.py). "
            "`counts=release` keeps the release's counts (whole blocks, each batch's shortest context) at "
            "padded static shapes; its rows are over the real tokens.", "",
            "Defaults, fidelity first and cost second: the four ImageNet configs use `counts=release` (the "
            "release's masks, matched below within sampling error), with `num_context` capped above the longest "
            "truncated context seen in simulation (ViT-H/14: 128 of 225; cuts, if any, are logged), which costs "
            "1.43x the FLOPs per image of `counts=fixed` on ViT-H/14 (experiments/results/mask_cost.md); the "
            "demo keeps `counts=fixed` (its 7x7 grid cannot run the release's settings, and it is the CPU "
            "figure of merit).", ""]
  for setting, all_stats, analytic, notes in results:
    lines += [f"## {setting.title}", "",
              f"Batch {setting.batch}. Analytic mean target block (uniform draw, release clamp): "
              f"h {analytic[0]:.3f}, w {analytic[1]:.3f}, h*w {analytic[2]:.2f}.", "",
              "| sampler | images | mean h x w (h*w) | tokens per block | context tokens (range) | "
              "target in last row/col | context in last row/col | target coverage, last row / col | s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for st in all_stats:
      s = st.summary()
      lo, hi = s["context_len_range"]
      lines.append(
          f"| {s['sampler']} | {s['images']} | {s['block_h']:.2f} x {s['block_w']:.2f} ({s['block_area']:.2f}) | "
          f"{s['block_tokens']:.2f} | {s['context_len']:.2f} ({lo}-{hi}) | {s['target_edge']:.3f} | "
          f"{s['context_edge']:.3f} | {s['target_last_row']:.3f} / {s['target_last_col']:.3f} | "
          f"{s['seconds']:.1f} |")
    lines.append("")
    lines += [f"- {st.label}: {st.note}" for st in all_stats]
    lines += [f"- {n}" for n in notes]
    lines += ["", f"![coverage](mask_coverage_{setting.name}.png)", "",
              f"![histograms](mask_histograms_{setting.name}.png)", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def compare(ours: Stats, release: Stats, what: str = "release mode") -> str:
  """One line: how far one of our samplers' maps and sizes are from the release collator's."""
  dc = np.abs(ours.context_map() - release.context_map()).max()
  dt = np.abs(ours.target_map() - release.target_map()).max()
  # Ours predicts num_target tokens of each block, the release all of them: compare the blocks too.
  de = np.abs(ours.extent_map() - release.extent_map()).max()
  o, r = ours.summary(), release.summary()
  return (f"ours ({what}) vs the release collator: max |coverage difference| context {dc:.3f}, "
          f"target tokens {dt:.3f}, inside a target block {de:.3f}; mean block h*w "
          f"{o['block_area']:.2f} vs {r['block_area']:.2f} +- {r['block_area_se']:.2f}; mean context length "
          f"{o['context_len']:.2f} +- {o['context_len_se']:.2f} vs {r['context_len']:.2f} +- {r['context_len_se']:.2f} (per-batch "
          f"truncated; +- one standard error over batches)")


def draw_strategy(setting: Setting, strategy: str, batches: int, seed: int = 0) -> Stats:
  """One of the ablation's mask strategies (ijepa_jax/mask_strategies.py) with the setting's config; the
  'block extent' recorded is the first target block's bounding box (its kept tokens' rows and columns)."""
  from ijepa_jax.mask_strategies import make_sampler
  mask = load_config(setting.config).mask
  mask.strategy = strategy
  grid = setting.image_size // setting.patch_size
  sampler = make_sampler(mask, grid)
  stats = Stats(f"mask.strategy={strategy}", grid)
  start = time.perf_counter()
  for i in range(batches):
    out = sampler(np.random.default_rng([seed, i]), setting.batch)
    r, c = np.divmod(out["target_idx"][0, 0], grid)
    stats.add(out["context_idx"], out["target_idx"], (int(np.ptp(r)) + 1, int(np.ptp(c)) + 1))
  stats.seconds = time.perf_counter() - start
  stats.note = (f"{sampler.num_context} context tokens, {sampler.num_targets} target block(s) of "
                f"{sampler.num_target} tokens")
  return stats


def load_release(path: str | None):
  """(MaskCollator class, torch) from the checkout at `path`, or (None, reason)."""
  if path is None:
    return None, "not drawn (no --release given)"
  release = os.path.abspath(path)
  if not os.path.isdir(release):
    return None, f"not drawn: no release checkout at {path}"
  try:
    import torch
  except ImportError as e:
    return None, f"not drawn: torch is not importable ({e})"
  if not os.path.isfile(os.path.join(release, "src", "masks", "multiblock.py")):
    raise SystemExit(f"mask_stats: error: {release} has no src/masks/multiblock.py: "
                     "not a facebookresearch/ijepa checkout")
  torch.set_num_threads(1)
  sys.path.insert(0, release)
  from src.masks.multiblock import MaskCollator   # the release's package 'src', from --release
  return (MaskCollator, torch), None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--release", default=None, help="checkout of facebookresearch/ijepa (holds src/)")
  parser.add_argument("--out", default=os.path.join("experiments", "results"), help="folder for PNGs and mask_stats.md")
  parser.add_argument("--batches", type=int, default=500, help="batches per sampler and setting")
  parser.add_argument("--strategies", action="store_true",
                      help="also draw the ablation's mask strategies (mask_coverage_strategies_<setting>.png)")
  parser.add_argument("--release_commit", default='52c1ae9 ("Initial commit")',
                      help="recorded when the checkout has no .git")
  args = parser.parse_args(argv)
  sys.path.insert(0, REPO)
  release, why_not = load_release(args.release)
  if why_not:
    print(f"mask_stats: release collator {why_not}")
  os.makedirs(args.out, exist_ok=True)

  results = []
  for setting in SETTINGS:
    all_stats, notes = [], []
    for mode in ("release", "uniform"):
      stats, sampler = draw_ours(setting, mode, args.batches)
      all_stats.append(stats)
      if mode == "release":
        analytic = analytic_block(sampler)
        t_min = sampler.num_target
    if setting.name != "demo":   # the demo's 7x7 grid keeps counts=fixed (configs/fashion_mnist.py)
      all_stats.append(draw_ours_release_counts(setting, args.batches))
    if release is not None:
      mask = load_config(setting.config).mask
      if t_min <= mask.min_keep:   # its target-block loop would never end (see ijepa_jax/masks.py)
        notes.append(f"release collator skipped: target blocks of {t_min} tokens <= min_keep {mask.min_keep} "
                     "would make it loop forever")
      else:
        rel = draw_release(*release, setting, mask, args.batches)
        all_stats.append(rel)
        notes.append(compare(all_stats[0], rel))
        exact = [st for st in all_stats if st.label == "ours, counts=release"]
        if exact:
          notes.append(compare(exact[0], rel, "counts=release"))
    elif why_not:
      notes.append(f"release collator {why_not}")
    if setting.name == "demo":
      notes.append("with the release's min_keep 10 the release collator never returns on this grid (target "
                   "blocks have 6-12 tokens); ours raises a ConfigError instead")
    plot_coverage(os.path.join(args.out, f"mask_coverage_{setting.name}.png"), setting, all_stats)
    if args.strategies:
      strategies = [draw_strategy(setting, name, args.batches) for name in ("multiblock", "rasterized", "block", "random")]
      plot_coverage(os.path.join(args.out, f"mask_coverage_strategies_{setting.name}.png"), setting, strategies)
      notes += [f"{st.label}: {st.note}" for st in strategies]
    plot_histograms(os.path.join(args.out, f"mask_histograms_{setting.name}.png"), setting, all_stats)
    results.append((setting, all_stats, analytic, notes))
    print(f"== {setting.title}")
    for st in all_stats:
      s = st.summary()
      print(f"  {s['sampler']:<36} h*w {s['block_area']:6.2f}  tokens/block {s['block_tokens']:6.2f}  "
            f"context {s['context_len']:6.2f}  target last row/col {s['target_edge']:.3f}  "
            f"context last row/col {s['context_edge']:.3f}  ({s['seconds']:.1f} s)")
    for n in notes:
      print(f"  {n}")

  date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip() or \
      datetime.datetime.now(datetime.timezone.utc).isoformat()
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import record  # pylint: disable=g-import-not-at-top
  header = [("date", date), ("machine", record.machine()),
            ("samples", f"{args.batches} batches per sampler and setting, seeds fixed (ours: per-batch "
                        "generators as the data pipeline; release: torch.manual_seed(0), its own batch counter)")]
  if release is not None:
    header.append(("release", f"facebookresearch/ijepa {args.release_commit}, src/masks/multiblock.py "
                              f"imported from --release (torch {release[1].__version__})"))
  shown = ["python experiments/mask_stats.py"] + ([f"--release={args.release}"] if args.release else []) + \
      [f"--out={args.out}"] + ([f"--batches={args.batches}"] if args.batches != 500 else [])
  md = os.path.join(args.out, "mask_stats.md")
  write_markdown(md, results, header, " ".join(shown))
  print(f"wrote {md} and the PNGs in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
