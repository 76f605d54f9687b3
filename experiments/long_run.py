"""The demo at 10x its steps: does more pretraining carry I-JEPA past raw pixels on k-NN and on 1% labels?

  python experiments/long_run.py [--root=workdir/long_run] [--steps=30000] [--probe_every=3000]
                                 [--out=experiments/results] [--set=KEY=VALUE ...] [--report_only]

configs/fashion_mnist.py with total_steps=--steps (the demo's 3000 x 10: ~32 epochs; the cosine lr and
the EMA schedules stretch over the whole run, every other setting is the demo's), trained in segments of
--probe_every steps (`--config.run_steps`, ROOT/run is the run's workdir). After each segment the
checkpoint is probed with the demo's probes (`python -m ijepa_jax.evaluate --out=ROOT/probes/<step>`;
the first probe also measures the random-init and raw-pixel levels, which do not change); the k-NN
monitor logs along the way (metrics.jsonl: every 500 steps on 2,000 / 1,000 images). The last segment
ends in the trainer's own probe table (ROOT/run/eval.json, eval.md, plots).

Resumable across sessions: stop it at any time (SIGTERM or Ctrl-C: the trainer saves a checkpoint, this
script waits for it) and run the same command again; it continues from the newest checkpoint, and probes
that are done are not rerun. Each segment's wall-clock time (stopped ones too) goes to ROOT/segments.jsonl.

Writes OUT/long_run.md (every probe against epochs, the raw-pixel and random-init levels, and when the
encoder first passes raw pixels on each probe) and OUT/long_run.png; --report_only just rewrites them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/fashion_mnist.py"
TRAINED, INIT, PIXELS = "I-JEPA target encoder", "same encoder at random init", "raw pixels"
# (label, eval.json table row suffix, probe): the demo's four headline numbers.
PROBES = (("linear", "last layer", "linear"), ("linear, last 4", "last 4 layers", "linear"),
          ("1% labels", "last layer", "lowshot"), ("k-NN", "last layer", "knn"))


def checkpoint_steps(run_dir: str) -> list[int]:
  """The steps of the finished checkpoints in run_dir/checkpoints (Orbax names them by step)."""
  path = os.path.join(run_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def _final(run_dir: str, total: int) -> dict | None:
  path = os.path.join(run_dir, "eval.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  return result if result.get("step") == total else None


def _log_segment(root: str, start: int, end: int, seconds: float, what: str) -> None:
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import record
  row = {"what": what, "from_step": start, "to_step": end, "seconds": round(seconds, 1),
         "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "host": platform.node(), "machine": record.machine()}
  with open(os.path.join(root, "segments.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")


def _call(args: list[str], root: str, start: int, end: int, what: str) -> None:
  """Runs one trainer or probe process and logs its time. SIGTERM or SIGINT here reach it as SIGTERM (the
  trainer then checkpoints and exits; a Ctrl-C from a terminal has reached it already, and a second SIGINT
  would interrupt its save), this script waits for it, logs the segment as stopped and exits."""
  t = time.time()
  child = subprocess.Popen(args, cwd=REPO)
  stopped = []

  def forward(signum, frame):
    stopped.append(signum)
    child.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    code = child.wait()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  _log_segment(root, start, end, time.time() - t, what + (" (stopped)" if stopped else ""))
  if stopped:
    sys.exit(f"Stopped by {signal.Signals(stopped[0]).name} during '{what}' (from step {start}); the trainer "
             "keeps its checkpoints: run the same command again to continue.")
  if code:
    raise subprocess.CalledProcessError(code, args)


def _train(root: str, run_dir: str, steps: int, start: int, until: int, extra: list[str]) -> None:
  args = [sys.executable, "-m", "ijepa_jax.main", f"--config={CONFIG}", f"--workdir={run_dir}",
          f"--config.total_steps={steps}", f"--config.run_steps={until - start}",
          *(f"--config.{kv}" for kv in extra)]
  print(f"[train {start} -> {until}] {' '.join(args[1:])}", flush=True)
  _call(args, root, start, until, "train" + (" + final probes" if until == steps else ""))


def _probe(root: str, run_dir: str, step: int, baselines: bool, extra: list[str]) -> None:
  out = os.path.join(root, "probes", str(step))
  args = [sys.executable, "-m", "ijepa_jax.evaluate", f"--checkpoint={run_dir}", f"--step={step}", f"--out={out}",
          f"--config={CONFIG}", *(f"--config.{kv}" for kv in extra)]
  if not baselines:   # the random-init and raw-pixel levels are measured once (by the first probe)
    args += ["--config.probe.random_init_baseline=False", "--config.probe.raw_pixels_baseline=False"]
  print(f"[probe {step}] {' '.join(args[1:])}", flush=True)
  _call(args, root, step, step, "probe")


def run(root: str, steps: int, probe_every: int, extra: list[str]) -> None:
  """Trains and probes until ROOT/run/eval.json is the final step's; resumes wherever it stopped."""
  run_dir = os.path.join(root, "run")
  os.makedirs(root, exist_ok=True)
  while _final(run_dir, steps) is None:
    done = checkpoint_steps(run_dir)
    at = done[-1] if done else 0
    probed = _probed(root)
    if 0 < at < steps and at % probe_every == 0 and at not in probed:
      _probe(root, run_dir, at, baselines=not any(_levels(r) for r in probed.values()), extra=extra)
      continue
    until = steps if at >= steps else min(steps, (at // probe_every + 1) * probe_every)
    _train(root, run_dir, steps, at, until, extra)   # at == steps: the trainer only runs its final probes
  print(f"The long run is finished: {run_dir}/eval.json", flush=True)


# ------------------------------------------------------------------------------------------------ report
def _probed(root: str) -> dict[int, dict]:
  out = {}
  base = os.path.join(root, "probes")
  for name in os.listdir(base) if os.path.isdir(base) else []:
    path = os.path.join(base, name, "eval.json")
    if name.isdigit() and os.path.exists(path):
      with open(path) as f:
        out[int(name)] = json.load(f)
  return out


def _top1(result: dict, row: str, probe: str):
  cell = result.get("table", {}).get(row, {}).get(probe)
  return None if cell is None else cell["top1"]


def _levels(result: dict) -> dict:
  """{label: (raw pixels, random init)} from a probe run that measured them, else {}."""
  if PIXELS not in result.get("table", {}):
    return {}
  return {label: (_top1(result, PIXELS, probe), _top1(result, f"{INIT}, {suffix}", probe))
          for label, suffix, probe in PROBES}


def _pct(v) -> str:
  return "–" if v is None else f"{100 * v:.2f}"


def collect(root: str, steps: int) -> tuple[list[tuple[int, dict]], dict, list[dict], int]:
  """(step, eval.json) rows in step order (the final probe last), the levels, the k-NN monitor rows, and the
  batch size."""
  run_dir = os.path.join(root, "run")
  results = _probed(root)
  final = _final(run_dir, steps)
  if final is not None:
    results[steps] = final
  levels = next((lv for _, r in sorted(results.items(), reverse=True) if (lv := _levels(r))), {})
  monitor = []
  if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
      monitor = [r for r in map(json.loads, f) if "knn_monitor" in r]
  batch = 64
  if os.path.exists(os.path.join(run_dir, "config.json")):
    with open(os.path.join(run_dir, "config.json")) as f:
      batch = json.load(f)["batch_size"]
  return sorted(results.items()), levels, monitor, batch


def monitor_pixel_level(run_dir: str) -> float | None:
  """k-NN top-1 of raw pixels on the k-NN monitor's own images (its probe.monitor_train bank and
  probe.monitor_test queries, the same subsets, k and temperature), the level the monitor's curve is to pass;
  the raw pixels as the probes read them (flattened at probe.raw_pixels_side, scaled to [0, 1])."""
  if not os.path.exists(os.path.join(run_dir, "config.json")):
    return None
  from ijepa_jax import loading
  from ijepa_jax.evaluation import knn, probes
  config = loading.read_config(run_dir)
  pc, d = config.probe, config.data
  (x, y), (xq, yq) = (probes.raw_pixel_features(config, split, int(n))
                      for split, n in ((d.split, pc.monitor_train), (d.eval_split, pc.monitor_test)))
  return knn.knn(x, y, xq, yq, pc.knn_k, pc.knn_temperature)["top1"]


def write_report(root: str, out: str, steps: int, probe_every: int = 3000, train_examples: int = 60000) -> str:
  rows, levels, monitor, batch = collect(root, steps)
  monitor_pixels = monitor_pixel_level(os.path.join(root, "run")) if monitor else None
  epoch = lambda step: step * batch / train_examples
  monitor_at = {int(r["step"]): r["knn_monitor"] for r in monitor}
  segments = []
  if os.path.exists(os.path.join(root, "segments.jsonl")):
    with open(os.path.join(root, "segments.jsonl")) as f:
      segments = [json.loads(line) for line in f]
  minutes = sum(s["seconds"] for s in segments) / 60
  hosts = sorted({s.get("machine") or f"{s['host']} ({s.get('cpus')} CPUs)" for s in segments})
  days = sorted({s["finished"][:10] for s in segments})
  lines = [
      "# The demo at 10x its steps: probes against epochs",
      "",
      f"`python experiments/long_run.py --steps={steps} --probe_every={probe_every}`: configs/fashion_mnist.py with "
      f"total_steps={steps} "
      f"(batch {batch}: {epoch(steps):.1f} epochs of Fashion-MNIST's {train_examples} training images; the lr and "
      "EMA schedules stretched over the run, everything else the demo's). Probes of the target encoder, top-1 % on "
      f"the 10,000 test images, the demo's probes at every segment's end (every {probe_every} steps); the k-NN monitor "
      "(a 2,000-image bank, 1,000 test images) along the way.",
      "",
      f"So far: {rows[-1][0] if rows else 0} of {steps} steps probed; {minutes:.0f} minutes of training and "
      f"probing in {len(segments)} segments ({', '.join(hosts) or 'none yet'}; "
      + (days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else "") + ").",
      "",
      "| step | epoch | " + " | ".join(label for label, _, _ in PROBES) + " | k-NN monitor (2k bank) |",
      "|---|---|" + "---|" * (len(PROBES) + 1),
  ]
  for step, result in rows:
    cells = [_pct(_top1(result, f"{TRAINED}, {suffix}", probe)) for _, suffix, probe in PROBES]
    lines.append(f"| {step} | {epoch(step):.1f} | " + " | ".join(cells) + f" | {_pct(monitor_at.get(step))} |")
  if levels:
    lines.append("| raw pixels | | " + " | ".join(_pct(levels[label][0]) for label, _, _ in PROBES)
                 + f" | {_pct(monitor_pixels)} |")
    lines.append("| random init | | " + " | ".join(_pct(levels[label][1]) for label, _, _ in PROBES) + " | |")
  if levels or monitor_pixels is not None:
    lines += ["", "**Past raw pixels?** (full probes at step " + ", ".join(str(s) for s, _ in rows) + "; the "
              "monitor every few hundred)" if rows else "**Past raw pixels?**"]
  if levels:
    for label, suffix, probe in PROBES:
      pixels = levels[label][0]
      if pixels is None:
        continue
      series = [(s, _top1(r, f"{TRAINED}, {suffix}", probe)) for s, r in rows]
      first = next((s for s, v in series if v is not None and v > pixels), None)
      best = max((v for _, v in series if v is not None), default=None)
      lines.append(f"- {label} (pixels {_pct(pixels)}): " + (
          f"first above at step {first} (epoch {epoch(first):.1f})." if first is not None else
          f"not yet; the best so far is {_pct(best)}."))
  if monitor_pixels is not None:
    first = next((int(r["step"]) for r in monitor if r["knn_monitor"] > monitor_pixels), None)
    lines.append(f"- k-NN monitor (raw pixels on the monitor's images {_pct(monitor_pixels)}): " + (
                     f"first above at step {first} (epoch {epoch(first):.1f})." if first is not None else
                     f"not yet; the best so far is {_pct(max(r['knn_monitor'] for r in monitor))}."))
  if not rows or rows[-1][0] < steps:
    lines += ["", "The run is not finished: `python experiments/long_run.py` continues it from its checkpoint."]
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "long_run.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  _plot(rows, levels, monitor, monitor_pixels, epoch, os.path.join(out, "long_run.png"))
  print("\n".join(lines), flush=True)
  return path


def _plot(rows, levels, monitor, monitor_pixels, epoch, path: str) -> None:
  from matplotlib.figure import Figure
  fig = Figure(figsize=(9, 4))
  ax = fig.subplots()
  colours = ("C0", "C1", "C2", "C3")
  for (label, suffix, probe), colour in zip(PROBES, colours):
    series = [(epoch(s), _top1(r, f"{TRAINED}, {suffix}", probe)) for s, r in rows]
    series = [(x, 100 * v) for x, v in series if v is not None]
    if series:
      ax.plot(*zip(*series), marker="o", color=colour, label=label)
    if label in levels and levels[label][0] is not None:
      ax.axhline(100 * levels[label][0], color=colour, ls="--", lw=1)
    if label in levels and levels[label][1] is not None:
      ax.axhline(100 * levels[label][1], color=colour, ls=":", lw=1)
  if monitor:
    ax.plot([epoch(r["step"]) for r in monitor], [100 * r["knn_monitor"] for r in monitor], color="C3", lw=0.8,
            alpha=0.5, label="k-NN monitor (2k bank)")
    if monitor_pixels is not None:
      ax.axhline(100 * monitor_pixels, color="C3", ls="-.", lw=0.8, alpha=0.5,
                 label="raw pixels, monitor's images")
  ax.plot([], [], color="0.4", ls="--", lw=1, label="raw pixels")
  ax.plot([], [], color="0.4", ls=":", lw=1, label="random init")
  ax.set_xlabel("epoch")
  ax.set_ylabel("top-1 % (Fashion-MNIST test)")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # outside: the levels span the height
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", default=os.path.join(REPO, "workdir", "long_run"))
  p.add_argument("--out", default=os.path.join(REPO, "experiments", "results"))
  p.add_argument("--steps", type=int, default=30000, help="total steps (the demo: 3000)")
  p.add_argument("--probe_every", type=int, default=3000, help="steps between probes (a segment)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override for the run and its probes (repeatable)")
  p.add_argument("--report_only", action="store_true", help="only rewrite the report from what is there")
  a = p.parse_args(argv)
  if a.steps <= 0 or a.probe_every <= 0:
    p.error("--steps and --probe_every must be positive")
  if not a.report_only:
    run(a.root, a.steps, a.probe_every, a.set)
  write_report(a.root, a.out, a.steps, a.probe_every)


if __name__ == "__main__":
  main()
