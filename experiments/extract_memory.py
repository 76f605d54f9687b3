"""Peak memory and wall time of `python -m ijepa_jax.extract` for a few images and for a full batch.

  python experiments/extract_memory.py --model=vit_base --images=2,256 --before=f36ede6
  flock /tmp/bigmem.lock python experiments/extract_memory.py --model=vit_huge --images=2

Writes a workdir with a random-weight checkpoint of configs/vit_h14.py's run (--model swaps the ViT size)
through `convert.write`, the writer `python -m ijepa_jax.convert` uses: step 0, the whole train state
(context and target encoder, predictor, fresh Adam moments), an empty data state. Then runs the extract
CLI on N random uint8 images, once per N, and reads each run's peak RSS (ru_maxrss of that process, from
wait4) and wall time. --before=COMMIT runs the same commands with the package as it was at COMMIT (a
`git archive` of it), for the before/after comparison. Rows are appended to
experiments/results/extract_memory.md with the date, versions, machine and commands.

A ViT-H/14 train state takes ~11 GB to write: on a shared machine run it under the big-memory lock.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results", "extract_memory.md")


def make_workdir(model: str, out: str) -> None:
  """A checkpoint of configs/vit_h14.py with this ViT size and random weights, as convert writes one."""
  sys.path.insert(0, REPO)
  import importlib.util
  import jax
  from ijepa_jax import convert
  spec = importlib.util.spec_from_file_location("vit_h14", os.path.join(REPO, "configs", "vit_h14.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.name = model
  state = convert.build_abstract(config)[2]()  # the born-sharded init of the run: the full train state
  jax.block_until_ready(state)
  convert.write(config, out, state)


def run(code_dir: str, args: list[str]) -> tuple[float, float, int]:
  """(peak RSS in GiB, wall seconds, return code) of `python -m ijepa_jax.extract ARGS` run from code_dir."""
  env = dict(os.environ, PYTHONPATH=code_dir)
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", "ijepa_jax.extract", *args], cwd=code_dir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  output = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)  # this process's own rusage, not every child's so far
  seconds = time.perf_counter() - start
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    print(output.decode()[-3000:], file=sys.stderr)
  return usage.ru_maxrss / 2 ** 20, seconds, proc.returncode  # ru_maxrss is in KiB on Linux


def versions(code_dir: str) -> str:
  import jax
  import orbax.checkpoint
  commit = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
  return f"jax {jax.__version__}, orbax-checkpoint {orbax.checkpoint.__version__}, ijepa_jax {commit} (after)"


def machine() -> str:
  model = "?"
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2 ** 20
  except OSError:
    mem = float("nan")
  return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.machine()}, CPU backend"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="vit_huge", help="model.name (configs/vit_h14.py has vit_huge, patch 14)")
  parser.add_argument("--images", default="2,256", help="comma-separated image counts")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--before", default=None, help="a commit to measure too (the code before the change)")
  parser.add_argument("--workdir", default=None, help="reuse (or write) the checkpoint here")
  parser.add_argument("--note", default="", help="a line for the results file")
  parser.add_argument("--write_only", action="store_true", help="write --workdir's checkpoint and stop")
  a = parser.parse_args()
  if a.write_only:
    make_workdir(a.model, a.workdir)
    return
  import numpy as np
  tmp = tempfile.mkdtemp(prefix="extract_memory_")
  workdir = a.workdir or os.path.join(tmp, a.model)
  if not os.path.exists(os.path.join(workdir, "config.json")):
    t = time.perf_counter()
    # In a child process: a forked child's ru_maxrss counts the parent's pages until its exec, so this
    # process must stay small (writing a ViT-H/14 train state here once made every extract read 20 GiB).
    subprocess.run([sys.executable, os.path.abspath(__file__), "--write_only", f"--model={a.model}",
                    f"--workdir={workdir}"], check=True)
    print(f"wrote {workdir} in {time.perf_counter() - t:.0f} s", flush=True)
  import json
  size = json.load(open(os.path.join(workdir, "config.json")))["data"]["image_size"]
  codes = [("after", REPO)]
  if a.before:
    old = os.path.join(tmp, "before")
    os.makedirs(old)
    subprocess.run(f"git -C {REPO} archive {a.before} ijepa_jax | tar -x -C {old}", shell=True, check=True)
    codes.insert(0, (f"before ({a.before})", old))
  rows = []
  for n in [int(x) for x in a.images.split(",")]:
    images = os.path.join(tmp, f"x{n}.npy")
    np.save(images, np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    for label, code in codes:
      args = [f"--checkpoint={workdir}", f"--images={images}", f"--out={os.path.join(tmp, 'f.npy')}",
              f"--batch_size={a.batch_size}"]
      rss, seconds, rc = run(code, args)
      rows.append((a.model, n, label, rss, seconds, rc))
      print(f"{a.model} {n} images, {label}: peak RSS {rss:.2f} GiB, {seconds:.0f} s, rc {rc}", flush=True)
  new = not os.path.exists(RESULTS)
  with open(RESULTS, "a") as f:
    if new:
      f.write("# Peak memory and time of `python -m ijepa_jax.extract` (issue 17, part 6)\n\n"
              "Made by experiments/extract_memory.py: a random-weight checkpoint of configs/vit_h14.py's run "
              "(ViT size from --model) written by `convert.write`, as `convert` writes one; peak RSS is the "
              "extract process's ru_maxrss.\n")
    f.write(f"\n## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {a.model}\n\n"
            f"- command: `python experiments/extract_memory.py {' '.join(sys.argv[1:])}`\n"
            f"- extract: `python -m ijepa_jax.extract --checkpoint=WORKDIR --images=X.npy --out=F.npy "
            f"--batch_size={a.batch_size}` (target encoder, mean-pooled)\n"
            f"- versions: {versions(REPO)}\n- machine: {machine()}\n")
    if a.note:
      f.write(f"- note: {a.note}\n")
    f.write("\n| model | images | code | peak RSS (GiB) | wall (s) | exit |\n|---|---|---|---|---|---|\n")
    for model, n, label, rss, seconds, rc in rows:
      f.write(f"| {model} | {n} | {label} | {rss:.2f} | {seconds:.0f} | {rc} |\n")
  print(f"appended to {RESULTS}")


if __name__ == "__main__":
  main()
