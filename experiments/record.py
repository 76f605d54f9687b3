"""What every benchmark here records with its numbers, in one place: the machine, the date and the load
average (this machine's speed varies by day: ratios hold within one results section only), results files
written section by section, and settings timed in interleaved rounds (a change in the machine's speed then
hits every setting alike).

The scripts run from the repository root as `python experiments/NAME.py`, so this module is importable as
`record` (their folder is first on sys.path).
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Callable

import numpy as np


def machine() -> str:
  """'AMD EPYC ..., 2 cores, 24 GiB RAM, Linux x86_64'."""
  model, mem = platform.processor() or "?", float("nan")
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), model)
  except (OSError, subprocess.CalledProcessError):
    pass
  try:
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2 ** 20
  except (OSError, StopIteration):
    pass
  return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.machine()}"


def loadavg() -> str:
  """The 1 / 5 / 15-minute load averages: what else ran on the cores."""
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "?"


def utc_date() -> str:
  return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def append(path: str, text: str, header: str = "") -> None:
  """Appends a section to a results file (its folder made; `header` first when the file is new or empty)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  new = not os.path.exists(path) or os.path.getsize(path) == 0
  with open(path, "a") as f:
    f.write((header + "\n" if new and header else "") + text)


def interleaved(settings: dict, measure: Callable, rounds: int, say: Callable = print) -> dict:
  """{name: [measure(*setting) of each round]}: every setting once a round, `rounds` rounds."""
  results = {name: [] for name in settings}
  for r in range(rounds):
    for name, setting in settings.items():
      results[name].append(measure(*setting))
      say(f"round {r}: {name}: {results[name][-1]}")
  return results


def medians(results: dict) -> dict:
  """{name: {key: median over rounds}} of interleaved()'s dict results."""
  return {name: {k: float(np.median([x[k] for x in rows])) for k in rows[0]} for name, rows in results.items()}
