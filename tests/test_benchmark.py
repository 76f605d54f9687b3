"""experiments/benchmark.py on a tiny config: it runs, compiles once, and its FLOP count agrees with XLA's."""
import re
import subprocess
import sys

from conftest import REPO

TINY = ["--config=configs/fashion_mnist.py", "--config.batch_size=16", "--config.data.image_size=16",
        "--config.model.patch_size=2", "--config.model.width=32", "--config.model.depth=1",
        "--config.model.num_heads=2", "--config.model.mlp_dim=64", "--config.model.predictor_width=16",
        "--config.model.predictor_depth=1", "--config.model.predictor_heads=2", "--config.mask.reference_batch=16"]


def _bench(*args):
  return subprocess.run([sys.executable, "experiments/benchmark.py", *args], capture_output=True, text=True,
                        cwd=REPO, timeout=300)


def _row(text: str, name: str) -> str:
  match = re.search(rf"^\| {re.escape(name)} \| ([^|]+) \|$", text, re.MULTILINE)
  assert match, f"no row {name!r} in:\n{text}"
  return match.group(1).strip()


def test_tiny_benchmark_writes_results(tmp_path):
  out = tmp_path / "benchmarks.md"
  proc = _bench(*TINY, "--steps=3", "--pipeline_batches=3", "--peak_tflops=0.1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = proc.stdout
  assert float(_row(text, "images/s")) > 0
  assert _row(text, "compilations (train_step._cache_size())") == "1"
  analytic = float(_row(text, "analytic FLOPs per image"))
  xla = float(_row(text, "XLA cost_analysis FLOPs per image (whole step / batch)"))
  assert 0.5 < xla / analytic < 2.0, (analytic, xla)
  assert _row(text, "MFU").endswith("%")
  assert "mask sets/s" in text and "grain pipeline" in text
  written = out.read_text()
  assert written.startswith("# Benchmarks") and "images/s" in written
  assert "--steps=3" in written                     # the exact command is recorded


def test_peak_flags_conflict_is_one_line():
  proc = _bench(*TINY, "--peak_tflops=1", "--measure_peak")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("error: give --peak_tflops or --measure_peak, not both.")


def test_input_pipeline_benchmark_writes_results(tmp_path):
  """experiments/input_pipeline.py, ours only on a few generated JPEGs: the rates, the cores-per-host table,
  the per-stage times and the exact command land in the results file; a wrong --reference is one line."""
  out, cache = tmp_path / "input_pipeline.md", tmp_path / "jpegs"
  args = [sys.executable, "experiments/input_pipeline.py", "--images=24", "--batch=4", "--batches=2", "--warmup=1",
          "--rounds=1", "--workers=0", f"--cache={cache}", f"--out={out}"]
  proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = out.read_text()
  assert written.startswith("# Host input pipeline") and "--images=24" in written
  row = re.search(r"^\| ours \(grain\) \| 0 \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", written, re.MULTILINE)
  assert row and float(row.group(1)) > 0 and float(row.group(3)) > 0, written
  cores = re.search(r"^\| ViT-H/14 \| ([0-9.e+]+) \| v5p host [^|]* \| (\d+) \| (\d+) \| ([0-9.]+) \|", written,
                    re.MULTILINE)
  assert cores and float(cores.group(4)) > 0, written
  # the FLOPs per image of configs/vit_h14.py as it stands (its masks included), and 50% of a v5p chip's
  # 459 TFLOP/s over them
  flops = _vit_h14_flops()
  assert abs(float(cores.group(1)) / flops - 1) < 1e-3, (cores.group(1), flops)
  assert int(cores.group(2)) == round(0.5 * 459e12 / flops) and int(cores.group(3)) == round(4 * 0.5 * 459e12 / flops)
  assert len(list(cache.rglob("*.JPEG"))) == 24
  stage = dict(re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \|$", written, re.MULTILINE))   # where the time goes
  for name in ("decode, Pillow (release)", "crop + resize (both)", "ours, load_crop end to end"):
    assert float(stage[name]) > 0, written
  assert float(stage["ours, load_crop end to end"]) > float(stage["crop + resize (both)"])
  proc = subprocess.run([*args, f"--reference={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=60)
  assert proc.returncode == 2 and "not a facebookresearch/ijepa checkout" in proc.stderr
  assert "Traceback" not in proc.stderr


def _vit_h14_flops() -> float:
  import importlib.util
  import os
  from ijepa_jax.flops import config_flops
  from ijepa_jax.mask_strategies import make_sampler
  spec = importlib.util.spec_from_file_location("vit_h14", os.path.join(REPO, "configs", "vit_h14.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  sampler = make_sampler(c.mask, c.data.image_size // c.model.patch_size)
  return float(config_flops(c, sampler.num_context, sampler.num_targets, sampler.num_target)["total"])


def test_data_sources_benchmark_writes_results(tmp_path):
  """experiments/data_sources.py on a few JPEGs: every source (folder / records, local / the emulator with
  latency) gets its row of positive rates, and the listing estimate and exact command land in the file."""
  out = tmp_path / "data_sources.md"
  proc = subprocess.run([sys.executable, "experiments/data_sources.py", "--images=12", "--threads=2", "--batch=4",
                         "--batches=2", "--rounds=1", "--records_per_shard=4", "--latency_ms=5",
                         f"--cache={tmp_path / 'cache'}", f"--out={out}"],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = out.read_text()
  assert written.startswith("# Image folder or record shards") and "--latency_ms=5" in written
  for name in ("image folder, local", "records, local", "image folder, gs:// (5 ms)", "records, gs:// (5 ms)"):
    row = re.search(rf"^\| {re.escape(name)} \| ([0-9.]+) \| [0-9.]+ \| ([0-9,]+) \| ([0-9,]+) \| ([0-9,]+) \|$",
                    written, re.MULTILINE)
    assert row and all(float(g.replace(",", "")) > 0 for g in row.groups()[1:]), (name, written)
  assert ">= 1,282 sequential list requests" in written
