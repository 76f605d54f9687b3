"""What extracting frozen-encoder features of ImageNet-1k costs: the paper's ViT-H/14 on TPU slices (the TPU
compiler's cost model, compile only) and the host-side JPEG decode of the evaluation pipeline (measured here).

  python experiments/eval_cost.py --out=experiments/results/eval_cost.md
      [--config=configs/vit_h14.py] [--topologies=v5p-8,v4-8,v6e-8] [--per_chip_batch=256] [--depths=4,6]
      [--full_depth=True] [--mfu=0.4] [--decode_images=300] [--decode_threads=2] [--decode_passes=3]

The forward pass costed is the one the probes run (ijepa_jax.evaluation.probes._encoder_featurizer): uint8
images [B, S, S, C] normalised on device, `features.tokens(encoder, params, x, "last4")` (the last 4 blocks'
outputs, each through the final LayerNorm, concatenated) averaged over the tokens: [B, 4 D] float32 out. The
encoder computes in the config's dtype (ViT-H/14: bfloat16, the release's autocast; fp32 parameters), the
parameters replicated on every chip, the batch split over the chips (mesh data=-1, fsdp=1), --per_chip_batch
images per chip. ImageNet-1k: 1,281,167 train + 50,000 val = 1,331,167 images.

For each slice (one host each: v5p-8 and v4-8 = 4 megacore chips, v6e-8 = 8 chips), compiled by the TPU
compiler for that topology without a TPU (libtpu, the tpu extra), each slice in its own subprocess (one libtpu
per process, and the compiler's memory is returned after each):
  * the encoder unrolled (model.scan_layers=False) at --depths blocks and, with --full_depth, at the config's
    depth. A scanned layer loop's body is counted once by the cost model, so the scanned program's figures are
    far too low; the per-block cost is linear in the depth (identical blocks; at >= 4 blocks the "last4" tail is
    the same program), so the two --depths give a line, extrapolated to the config's depth, and the full-depth
    unrolled compile checks it;
  * the config's own program (scan_layers as the config has it; ViT-H/14: True), for its memory analysis (what
    evaluation would allocate) and to show the cost model's undercount of a loop.
From each compile: cost_analysis()['optimal_seconds'] (the cost model's time for one device's program: a lower
bound, not a measurement), its 'flops', and memory_analysis(). Images/s per chip = per-chip batch / seconds.

ConcatBitcast: on v4 and v6e (libtpu 0.0.42.1) the compiler splits each fp32 weight matrix into async slices and
joins them with a `ConcatBitcast` custom call (v5p's programs have none), and the cost model puts -1 s on each
(optimal_seconds comes out negative: -108.55 for ViT-H/14 on a v4-8). The seconds used here are the cost model's
plus 1 s per ConcatBitcast in the compiled HLO text, i.e. those joins (a bitcast: no data moved) at 0 s. That this
recovers the rest of the cost model's sum is an inference, checked by linearity: the corrected 4- and 6-block
figures extrapolate to the corrected 32-block one within 0.2%. The raw figures are in the results too.

Model FLOPs per image: the analytic count of ijepa_jax.flops (the target encoder's forward on all N tokens:
matmuls + attention) next to the compiler's. GPU hours: an estimate at an assumed MFU of A100 (312 TFLOP/s bf16
dense) and H100 SXM (989 TFLOP/s) peak, nothing measured.

Host decode (measured on this machine, XLA:CPU host): `data.make_eval_dataset` over an `ImageFolder` of
--decode_images synthetic 500x375 JPEGs (ImageNet's typical size; smooth random fields plus fine grain, Pillow
quality 90, written once under --decode_dir), 224 px, --decode_threads threads; the median of --decode_passes
timed passes after a warm-up pass.
"""
from __future__ import annotations

import json
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
_TOPOLOGIES = flags.DEFINE_list("topologies", ["v5p-8", "v4-8", "v6e-8"],
                                "TPU slices (those ijepa_jax.tpu_topologies does not know are skipped).")
_PER_CHIP = flags.DEFINE_integer("per_chip_batch", 256, "Images per chip (the global batch: chips x this).")
_DEPTHS = flags.DEFINE_list("depths", ["4", "6"], "Two unrolled depths (>= 4: the same 'last4' tail) for the line.")
_FULL = flags.DEFINE_bool("full_depth", True, "Also compile the unrolled encoder at the config's depth.")
_MFU = flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilisation for the GPU-hour estimates.")
_DECODE_IMAGES = flags.DEFINE_integer("decode_images", 300, "Synthetic JPEGs for the host decode rate (0: skip).")
_DECODE_THREADS = flags.DEFINE_integer("decode_threads", 2, "make_eval_dataset threads.")
_DECODE_PASSES = flags.DEFINE_integer("decode_passes", 3, "Timed passes over the JPEGs (after one warm-up).")
_DECODE_DIR = flags.DEFINE_string("decode_dir", "/tmp/eval_cost_jpegs", "Where the synthetic JPEGs are written.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: compile for this slice and print one JSON line.")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results", "eval_cost.md"), "Results file.")

IMAGENET = {"train": 1_281_167, "val": 50_000}
GPUS = {"A100 (312 TFLOP/s bf16 dense)": 312e12, "H100 SXM (989 TFLOP/s bf16 dense)": 989e12}
# Peak bf16 TFLOP/s per chip as Google's Cloud TPU pages state it (for the cost model's implied utilisation only).
TPU_PEAK = {"v4": 275e12, "v5p": 459e12, "v5e": 197e12, "v6e": 918e12}
GIB = 2 ** 30


def _config_file() -> str:
  return next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "configs/vit_h14.py")


# ============================================================================ one slice (subprocess)
def compile_forward(config, mesh, depth: int, scan: bool, per_chip: int) -> dict:
  """The probes' feature forward for `depth` blocks, compiled for `mesh`'s (TPU) devices: cost and memory."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from ijepa_jax import sharding
  from ijepa_jax.evaluation import features
  from ijepa_jax.models import make_models
  from ijepa_jax.step import normalise
  m = config.model.copy_and_resolve_references()
  m.depth, m.scan_layers, m.remat = depth, scan, "none"   # forward only: nothing to recompute
  d = config.data
  encoder, _ = make_models(m, d.image_size, d.channels, jnp.dtype(config.dtype))
  shapes = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, d.image_size, d.image_size,
                                                                                d.channels))))["params"]
  replicated = sharding.replicated(mesh)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), nn.unbox(shapes))
  devices = mesh.devices.size
  images = jax.ShapeDtypeStruct((per_chip * devices, d.image_size, d.image_size, d.channels), np.uint8,
                                sharding=sharding.batch_sharding(mesh))
  mean, std = tuple(d.mean), tuple(d.std)

  @jax.jit
  def forward(p, x):   # = probes._encoder_featurizer's
    return features.tokens(encoder, p, normalise(x, mean, std), "last4").astype(jnp.float32).mean(axis=1)

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    t0 = time.perf_counter()
    lowered = forward.lower(params, images)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  stats = compiled.memory_analysis()
  mem = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                                 "generated_code")}
  mem["peak"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["generated_code"]
  targets = re.findall(r'custom_call_target="([^"]+)"', compiled.as_text())
  raw = float(cost.get("optimal_seconds", float("nan")))
  concat_bitcasts = targets.count("ConcatBitcast")
  return dict(depth=depth, scan=scan, per_chip=per_chip, devices=devices, raw_optimal_seconds=raw,
              concat_bitcasts=concat_bitcasts, custom_calls=sorted(set(targets)),
              optimal_seconds=raw + concat_bitcasts,   # see ConcatBitcast in the module docstring
              flops=float(cost.get("flops", float("nan"))), bytes_accessed=float(cost.get("bytes accessed", float("nan"))),
              features=int(compiled.out_info.shape[-1]) if hasattr(compiled, "out_info") else None,
              lower_s=t1 - t0, compile_s=t2 - t1, **mem)


def worker(name: str) -> None:
  """All compiles of one slice; prints one JSON line per compile (and flushes: a stopped run keeps them)."""
  import jax
  jax.config.update("jax_platforms", "cpu")   # compile only: never start a TPU runtime
  import ml_collections
  from ijepa_jax import sharding, tpu_topologies
  from ijepa_jax.aot import tpu_devices
  config = _CONFIG.value
  slice_ = tpu_topologies.parse(name)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), tpu_devices(slice_))
  full = config.model.depth if config.model.depth > 0 else _full_depth(config)
  runs = [(int(x), False) for x in _DEPTHS.value] + ([(full, False)] if _FULL.value else [])
  runs.append((full, bool(config.model.scan_layers)))
  for depth, scan in runs:
    r = compile_forward(config, mesh, depth, scan, _PER_CHIP.value)
    print("RESULT " + json.dumps(r), flush=True)


def _full_depth(config) -> int:
  from ijepa_jax.models import VIT_SIZES
  return int(VIT_SIZES[config.model.name]["depth"])


def run_slice(name: str) -> tuple[list[dict], str | None]:
  """(the compiles of one slice, an error line or None) from a worker subprocess."""
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={name}", f"--config={_config_file()}",
         f"--per_chip_batch={_PER_CHIP.value}", f"--depths={','.join(_DEPTHS.value)}", f"--full_depth={_FULL.value}"]
  cmd += [a for a in sys.argv[1:] if a.startswith("--config.")]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  rows = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  error = None
  if proc.returncode != 0:
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    error = (lines or ["(no output)"])[-1][:300]
  return rows, error


# ============================================================================ host decode
def write_jpegs(root: str, n: int, noise: float = 8.0) -> float:
  """n synthetic 500x375 'photos' under root/train/{class_a,class_b}/ (kept if already there): smooth random
  fields at three scales plus fine Gaussian grain, Pillow JPEG quality 90. Returns the mean file size in KiB."""
  from PIL import Image
  rng = np.random.default_rng(0)
  paths = [os.path.join(root, "train", f"class_{'ab'[i % 2]}", f"img_{i:05d}.JPEG") for i in range(n)]
  for p in paths:
    if os.path.exists(p):
      continue
    os.makedirs(os.path.dirname(p), exist_ok=True)
    img = np.full((375, 500, 3), 128.0, np.float32)
    for cells, amp in ((4, 90.0), (16, 40.0), (64, 15.0)):
      field = rng.integers(0, 256, (max(2, cells * 3 // 4), cells, 3), dtype=np.uint8)
      up = np.asarray(Image.fromarray(field).resize((500, 375), Image.BICUBIC), np.float32)
      img += (up / 127.5 - 1.0) * amp
    img += rng.normal(0.0, noise, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, "JPEG", quality=90)
  return float(np.mean([os.path.getsize(p) for p in paths])) / 1024


def decode_rates(root: str, n: int, threads_list: list[int], passes: int, batch: int = 64) -> dict:
  """{threads: median images/s} of make_eval_dataset over the ImageFolder (after one warm-up pass each)."""
  from ijepa_jax import data
  source = data.ImageFolder(root, "train", 3)
  indices = np.arange(len(source))
  out = {}
  for threads in threads_list:
    times = []
    for k in range(passes + 1):
      t0 = time.perf_counter()
      seen = sum(len(b["labels"]) for b in data.make_eval_dataset(source, indices, 224, 3, batch, threads=threads))
      assert seen == len(indices), (seen, len(indices))
      if k:
        times.append(time.perf_counter() - t0)
    out[threads] = len(indices) / float(np.median(times))
  return out


# ============================================================================ report
def _gib(b: float) -> str:
  return f"{b / GIB:.2f} GiB" if b >= GIB / 4 else f"{b / 2**20:.1f} MiB"


def main(argv):
  del argv
  if _WORKER.value:
    worker(_WORKER.value)
    return
  t_start = time.perf_counter()
  import importlib.metadata
  import jax
  import jax.numpy as jnp
  from ijepa_jax import flops, tpu_topologies
  from ijepa_jax.models import make_models
  config = _CONFIG.value
  d = config.data
  encoder, predictor = make_models(config.model, d.image_size, d.channels, jnp.dtype(config.dtype))
  total = sum(IMAGENET.values())
  analytic = flops.step_flops(grid=encoder.grid, patch=encoder.patch_size, channels=encoder.channels,
                              width=encoder.width, depth=encoder.depth, mlp=encoder.mlp_dim, pred_width=predictor.width,
                              pred_depth=predictor.depth, pred_mlp=predictor.mlp_dim or 4 * predictor.width,
                              num_context=1, num_targets=1, num_target=1)["target encoder forward (N tokens)"]
  n_params = None
  try:
    shapes = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, d.image_size, d.image_size,
                                                                                  d.channels))))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  except Exception:  # the count is only context
    pass
  dirty = subprocess.run(["git", "status", "--porcelain", "ijepa_jax"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
  try:
    libtpu = importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    libtpu = None
  cmd = " ".join(["python experiments/eval_cost.py", *sys.argv[1:]])
  lines = [f"# What feature extraction of ImageNet-1k costs ({os.path.basename(_config_file())}, frozen target encoder)",
           "",
           f"Written by `{cmd}` (see its docstring) on {time.strftime('%Y-%m-%d')}; jax {jax.__version__}, "
           f"libtpu {libtpu}, commit {head}{' with uncommitted changes under ijepa_jax/' if dirty else ''}.",
           "",
           f"The forward pass: the probes' featurizer (uint8 images normalised on device, `features.tokens(encoder, "
           f"params, x, \"last4\")` averaged over the {encoder.num_patches} tokens: [B, {4 * encoder.width}] float32 "
           f"out), {config.model.name} ({encoder.depth} blocks, {encoder.width} wide, patch {encoder.patch_size}, "
           f"{d.image_size} px{f', {n_params / 1e6:.0f}M parameters' if n_params else ''}), compute dtype "
           f"{config.dtype}, fp32 parameters replicated on every chip, the batch split over the chips, "
           f"{_PER_CHIP.value} images per chip. ImageNet-1k: {IMAGENET['train']:,} train + {IMAGENET['val']:,} val "
           f"= {total:,} images.",
           ""]
  save = lambda: open(_OUT.value, "w").write("\n".join(lines) + "\n")

  # ---------------------------------------------------------------- host decode (first: the machine is quietest)
  decode = None
  if _DECODE_IMAGES.value > 0:
    threads_list = sorted({1, _DECODE_THREADS.value})
    kib = write_jpegs(_DECODE_DIR.value, _DECODE_IMAGES.value)
    load = os.getloadavg()[0]   # what else ran on the cores just before (1-minute load average)
    rates = decode_rates(_DECODE_DIR.value, _DECODE_IMAGES.value, threads_list, _DECODE_PASSES.value)
    cores = os.cpu_count()
    t = _DECODE_THREADS.value
    decode = rates[t] / min(t, cores)
    print(f"host decode: {rates} images/s", flush=True)

  # ---------------------------------------------------------------- TPU slices
  rows, errors = {}, {}
  for name in _TOPOLOGIES.value:
    try:
      tpu_topologies.parse(name)
    except ValueError as e:
      errors[name] = f"skipped: {e}"
      continue
    t0 = time.perf_counter()
    rows[name], err = run_slice(name)
    if err:
      errors[name] = err
    print(f"{name}: {len(rows[name])} compiles in {time.perf_counter() - t0:.0f} s{f'; error: {err}' if err else ''}",
          flush=True)

  lo, hi = (int(x) for x in _DEPTHS.value[:2])
  full = encoder.depth
  summary = {}
  lines += ["## TPU: the compiler's cost model (compile only; not a measurement)", "",
            f"Per slice, the TPU compiler's `cost_analysis()['optimal_seconds']` for one chip's program (its "
            f"{_PER_CHIP.value} images): the cost model's time, a lower bound on the step, not a run. The encoder is "
            f"compiled unrolled (`model.scan_layers=False`): a scanned layer loop's body is counted once. Per-chip "
            f"seconds at {lo} and {hi} blocks give a line (each block the same program; at >= 4 blocks the 'last4' "
            f"tail is the same), extrapolated to {full}; "
            + (f"the unrolled {full}-block compile itself is the headline figure and checks the line."
               if _FULL.value else f"the extrapolated figure is the headline (no {full}-block unrolled compile).")
            + " Seconds: the cost model's, plus 1 s for each ConcatBitcast op it costs at -1 s (v4, v6e; see the "
            "script's docstring and the per-compile table below). Images/s per chip = per-chip batch / seconds; "
            "hours = ImageNet's images / the slice's images/s.", "",
            "| slice | chips | global batch | s/step at " + f"{lo} / {hi} blocks | {full} blocks, extrapolated | "
            f"{full} blocks, unrolled compile | images/s per chip | images/s per slice | hours for {total:,} images | "
            "chip-hours | compiler TFLOP per step per chip | implied utilisation of bf16 peak |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, rs in rows.items():
    slice_ = tpu_topologies.parse(name)
    by = {(r["depth"], r["scan"]): r for r in rs}
    if (lo, False) not in by or (hi, False) not in by:
      lines.append(f"| {name} | {slice_.chips} | - | compile failed: {errors.get(name, '?')} |||||||||")
      continue
    a, b = by[(lo, False)], by[(hi, False)]
    slope = (b["optimal_seconds"] - a["optimal_seconds"]) / (hi - lo)
    extrap = a["optimal_seconds"] + (full - lo) * slope
    fslope = (b["flops"] - a["flops"]) / (hi - lo)
    extrap_flops = a["flops"] + (full - lo) * fslope
    direct = by.get((full, False))
    seconds = direct["optimal_seconds"] if direct else extrap
    step_flops = direct["flops"] if direct else extrap_flops
    per_chip = _PER_CHIP.value / seconds
    per_slice = per_chip * slice_.chips
    hours = total / per_slice / 3600
    peak = TPU_PEAK.get(slice_.generation)
    util = f"{step_flops / seconds / peak:.0%} of {peak / 1e12:.0f}" if peak else "-"
    check = f"{direct['optimal_seconds']:.4f} ({direct['optimal_seconds'] / extrap - 1:+.2%} vs line)" if direct else "-"
    summary[name] = dict(per_chip=per_chip, per_slice=per_slice, hours=hours, chips=slice_.chips,
                         flops_per_image=step_flops / _PER_CHIP.value, slice_=slice_, by=by)
    lines.append(f"| {name} | {slice_.chips} | {_PER_CHIP.value * slice_.chips} | {a['optimal_seconds']:.4f} / "
                 f"{b['optimal_seconds']:.4f} | {extrap:.4f} | {check} | {per_chip:,.0f} | {per_slice:,.0f} | "
                 f"{hours:.3f} ({hours * 60:.1f} min) | {hours * slice_.chips:.2f} | {step_flops / 1e12:.1f} | {util} |")
  for name, err in errors.items():
    if name not in summary:
      lines.append(f"| {name} | - | - | {err} |||||||||")
  lines += ["", "Implied utilisation: the compiler's FLOPs / (cost-model seconds x the chip's bf16 peak as Google "
            "publishes it: v4 275, v5p 459, v6e 918 TFLOP/s); it says how far from peak the cost model places the "
            "program, nothing more.", ""]

  lines += [f"### Memory per chip (TPU compiler's memory_analysis, {_PER_CHIP.value} images per chip)", "",
            "| slice | program | arguments (params + images) | output | temp | generated code | peak | HBM per chip | "
            "cost model s/step | lower + compile |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name, rs in rows.items():
    slice_ = tpu_topologies.parse(name)
    for r in rs:
      if r["depth"] != full:
        continue
      what = (f"{full} blocks, scanned (scan_layers=True{', the config' if config.model.scan_layers else ''}"
              f"; cost model sees one block)" if r["scan"] else f"{full} blocks, unrolled")
      lines.append(f"| {name} | {what} | {_gib(r['argument'])} | {_gib(r['output'])} | {_gib(r['temp'])} | "
                   f"{_gib(r['generated_code'])} | {_gib(r['peak'])} | {_gib(slice_.hbm_bytes)} | "
                   f"{r['optimal_seconds']:.4f} | {r['lower_s']:.0f} + {r['compile_s']:.0f} s |")
  lines.append("")
  lines += ["### Every compile: the cost model's raw optimal_seconds and the ConcatBitcast correction", "",
            "| slice | blocks | program | raw optimal_seconds | ConcatBitcast ops | seconds used (raw + 1 each) | "
            "compiler TFLOP | custom calls in the program |", "|---|---|---|---|---|---|---|---|"]
  for name, rs in rows.items():
    for r in rs:
      lines.append(f"| {name} | {r['depth']} | {'scanned' if r['scan'] else 'unrolled'} | "
                   f"{r['raw_optimal_seconds']:.4f} | {r['concat_bitcasts']} | {r['optimal_seconds']:.4f} | "
                   f"{r['flops'] / 1e12:.2f} | {', '.join(r['custom_calls']) or '-'} |")
  lines += ["", "(The scanned program's seconds and FLOPs count its loop body once: about one block, not "
            f"{full}.)", ""]
  save()

  # ---------------------------------------------------------------- FLOPs and GPU estimates
  compiler_per_image = next((s["flops_per_image"] for s in summary.values()), None)
  lines += ["## Model FLOPs per image and GPU hours (an estimate, nothing measured)", "",
            f"- analytic (ijepa_jax.flops, target encoder forward on all {encoder.num_patches} tokens: matmuls + "
            f"attention, 2 FLOPs per multiply-add; LayerNorms, GELU, softmax, the mean not counted): "
            f"**{analytic / 1e9:.1f} GFLOP per image**, {analytic * total / 1e18:.3f} EFLOP for {total:,} images",
            f"- the TPU compiler's count of the whole program ({full} blocks, per chip step / per-chip batch): "
            + (f"{compiler_per_image / 1e9:.1f} GFLOP per image ({compiler_per_image / analytic:.3f} x analytic)"
               if compiler_per_image else "-"), "",
            f"GPU hours = analytic FLOPs x {total:,} images / ({_MFU.value:.0%} MFU, assumed, x the GPU's peak):", "",
            "| GPU | assumed MFU | images/s per GPU | GPU-hours for ImageNet-1k |", "|---|---|---|---|"]
  for gpu, peak in GPUS.items():
    rate = _MFU.value * peak / analytic
    lines.append(f"| {gpu} | {_MFU.value:.0%} | {rate:,.0f} | {total / rate / 3600:.2f} |")
  lines += ["", "(An estimate only: the MFU is assumed, not measured, and the input pipeline below is ignored.)", ""]
  save()

  # ---------------------------------------------------------------- host decode
  if decode is not None:
    t = _DECODE_THREADS.value
    lines += ["## Host-side decode of the evaluation pipeline (measured: XLA:CPU host, this 2-core machine)", "",
              f"`data.make_eval_dataset(ImageFolder, indices, 224, 3, 64, threads=...)` over {_DECODE_IMAGES.value} "
              f"synthetic 500x375 JPEGs (smooth random fields + fine grain, Pillow quality 90, mean {kib:.0f} KiB a file; "
              f"ImageNet's train JPEGs average ~110 KB: its 138 GB archive over 1.28M files), from the page cache; the median of {_DECODE_PASSES.value} "
              f"passes after a warm-up. {os.cpu_count()} cores, shared with other work (1-minute load average "
              f"{load:.1f} just before): a lower bound on this machine's rate.", "",
              "| threads | images/s | images/s per core |", "|---|---|---|"]
    for threads, rate in rates.items():
      lines.append(f"| {threads} | {rate:,.0f} | {rate / min(threads, os.cpu_count()):,.0f} |")
    per_core = {k: v / min(k, os.cpu_count()) for k, v in rates.items()}
    lines += ["", f"Headline: **{decode:,.0f} images/s per core** (threads={t}). On cores shared with other work the "
              "threads=1 row is the better per-core figure when it is higher (one thread meets less contention).", "",
              "Host cores needed to keep each slice fed (arithmetic: the slice's cost-model images/s over a per-core "
              "decode rate above; decode and resize only):", "",
              "| slice | images/s (cost model) | " + " | ".join(f"cores at {r:,.0f}/s (threads={k})"
                                                          for k, r in per_core.items()) + " |",
              "|---|---|" + "---|" * len(per_core)]
    for name, s in summary.items():
      lines.append(f"| {name} | {s['per_slice']:,.0f} | "
                   + " | ".join(f"{s['per_slice'] / r:,.0f}" for r in per_core.values()) + " |")
    lines.append("")
  lines += ["## Where each number comes from", "",
            "- TPU seconds, images/s, hours, chip-hours, TPU memory: the TPU compiler (libtpu) compiling for the "
            "topology on this CPU-only machine, its cost model and memory analysis; no TPU ran.",
            "- FLOPs per image: ijepa_jax.flops (analytic) and the TPU compiler's cost analysis.",
            f"- GPU hours: arithmetic from the analytic FLOPs, published peaks and an assumed {_MFU.value:.0%} MFU.",
            "- Host decode: measured here, on this 2-core machine (XLA:CPU host).",
            f"- Script wall time: {time.perf_counter() - t_start:.0f} s.", ""]
  save()
  print("\n".join(lines))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
