"""PNG figures of a run, written into its workdir: training curves, mask examples, probe results.

Each function takes plain data (rows of metrics.jsonl, image arrays and index arrays, eval.json) and
a path, so notebooks can call them too. Figures are built with matplotlib's object API (no pyplot), so
writing them never switches the backend of a notebook that imports this module.
"""
from __future__ import annotations

import io
import json

import numpy as np

from ijepa_jax import storage
from ijepa_jax.masks import real_tokens


def _subplots(rows: int, cols: int, figsize, **kw):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(rows, cols, **kw)


def training_curves(rows: list[dict], path: str) -> str:
  """Loss (log scale), learning rate, weight decay and EMA momentum against the step, and the k-NN
  monitor's top-1 where it ran (`knn_monitor`: logged on some steps only)."""
  panels = [("loss", True), ("lr", False), ("wd", False), ("momentum", False)]
  if any("knn_monitor" in r for r in rows):
    panels.append(("knn_monitor", False))
  fig, axes = _subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
  for ax, (key, log) in zip(axes, panels):
    logged = [r for r in rows if key in r]
    ax.plot([r["step"] for r in logged], [r[key] for r in logged], lw=1, marker="o" if key == "knn_monitor" else None)
    ax.set_title(key)
    ax.set_xlabel("step")
    if log:
      ax.set_yscale("log")
  fig.tight_layout()
  _save(fig, path)
  return path


def mask_overlay(grid: int, context_idx: np.ndarray, target_idx: np.ndarray) -> np.ndarray:
  """[grid, grid] map: 0 unused, 1 context, 2 + m for target block m (a token can be in several)."""
  out = np.zeros(grid * grid, np.int32)
  out[np.asarray(context_idx)] = 1
  for m, block in enumerate(np.asarray(target_idx)):
    out[block] = 2 + m
  return out.reshape(grid, grid)


def mask_examples(images: np.ndarray, context_idx: np.ndarray, target_idx: np.ndarray, grid: int,
                  path: str) -> str:
  """Images [n, S, S, C] uint8 with their context (blue) and target blocks (one colour each) drawn over.
  context_idx[i] [Kc] and target_idx[i] [M, Kt]: arrays, or lists of each image's (see masks.real_tokens)."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  n = len(images)
  fig, axes = _subplots(2, n, figsize=(2 * n, 4.2), squeeze=False)
  colours = np.array([[0, 0, 0, 0], [0.1, 0.3, 1.0, 0.45]] + [list(c[:3]) + [0.6] for c in
                     colormaps["autumn"](np.linspace(0, 1, len(target_idx[0])))])
  for i in range(n):
    img = images[i][..., 0] if images.shape[-1] == 1 else images[i]
    which = mask_overlay(grid, context_idx[i], target_idx[i])
    s = img.shape[0]
    for row, shown, title in ((0, which == 1, "context"), (1, which >= 2, "targets")):
      ax = axes[row, i]
      ax.imshow(img, cmap="gray" if img.ndim == 2 else None, extent=(0, s, s, 0))
      ax.imshow(np.where(shown[..., None], colours[which], 0.0), extent=(0, s, s, 0), interpolation="nearest")
      ax.set_axis_off()
      if i == 0:
        ax.set_title(title, loc="left", fontsize=9)
  fig.tight_layout()
  _save(fig, path)
  return path


def probe_results(result: dict, path: str) -> str:
  """Grouped bars: one group per probe, one bar per feature set (eval.json's 'table')."""
  table = result["table"]
  names = list(table)
  evals = [e for e in ("linear", "lowshot", "knn", "attentive") if any(e in row for row in table.values())]
  fig, ax = _subplots(1, 1, figsize=(5.5 + 2.2 * len(evals), 3.6))
  width = 0.8 / len(names)
  for j, name in enumerate(names):
    xs = [i + j * width for i in range(len(evals))]
    ys = [100 * table[name][e]["top1"] if e in table[name] else 0 for e in evals]
    bars = ax.bar(xs, ys, width, label=name)
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(evals))], evals)
  ax.set_ylabel("test top-1 (%)")
  low = min(100 * r["top1"] for row in table.values() for r in row.values())
  ax.set_ylim(max(0, low - 10), 100)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  _save(fig, path)
  return path


def _save(fig, path: str) -> None:
  """PNG bytes written through ijepa_jax.storage (a local or gs:// workdir)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  storage.path(path).write_bytes(buf.getvalue())


def write_run_plots(workdir: str, images=None, masks=None, grid: int | None = None) -> list[str]:
  """The demo's figures from what the workdir holds (and, for mask examples, a batch's images and masks)."""
  written = []
  metrics_path = storage.path(workdir) / "metrics.jsonl"
  if metrics_path.exists():
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    if rows:
      written.append(training_curves(rows, storage.join(workdir, "training_curves.png")))
  if images is not None:
    written.append(mask_examples(images, *real_tokens(masks), grid, storage.join(workdir, "mask_examples.png")))
  eval_path = storage.path(workdir) / "eval.json"
  if eval_path.exists():
    written.append(probe_results(json.loads(eval_path.read_text()), storage.join(workdir, "probe_results.png")))
  return written
