"""Performance harness: our jitted train step, its FLOPs and MFU, the host pipeline, and the release's step.

  python experiments/benchmark.py --config=configs/fashion_mnist.py [--config.KEY=VALUE ...] [--steps=20]
      [--reference=/path/to/ijepa] [--peak_tflops=X | --measure_peak] [--out=experiments/results/benchmarks.md]

Why this exists: "images/s" in a training log mixes the step, the data pipeline and logging; this
separates them, on one config, so that a change to any of them can be judged by the number it moves:
  * our step (ijepa_jax.train.build, the one main.py runs): lower + compile time, then the median and
    spread of N steps' wall time (warm-up excluded, each step waited for with block_until_ready),
    images/s, and the number of compilations (must be 1: shapes are static);
  * FLOPs of one step, counted analytically per image (ijepa_jax.flops: matmuls and attention only;
    backward = 2x forward) next to XLA's own count (compiled.cost_analysis()), achieved FLOP/s and MFU against
    --peak_tflops, --chip_peak (the chip's dense peak for the config's dtype, from CHIP_PEAK_TFLOPS) or,
    with --measure_peak, against a large fp32 matmul timed in the same run;
  * the device's peak memory (memory_stats(), where the backend has it); with --fit_batch, the largest
    of the given per-device batches whose compiled step fits the device's memory (compiled, not run);
  * with --precision_check, the first step's loss on the same batch and initial state in the config's
    dtype and in float32;
  * the host side: the mask sampler alone and the whole grain pipeline (images/s, this process);
  * with --reference (a checkout of facebookresearch/ijepa): its MaskCollator and its own train step
    (src/train.py's sequence, single process, fp32 CPU) on the same config, batch and mask settings.

Results are appended as a Markdown section to --out and printed. The release is CC BY-NC 4.0: its code
is imported at run time from --reference (through experiments/release_parity.py's helpers), never
copied here.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import sys
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import record   # experiments/ (this script's folder, first on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "experiments", "results", "benchmarks.md")
HEADER = """# Benchmarks

Performance of one I-JEPA configuration per section, measured by `experiments/benchmark.py` (see its
docstring): our jitted train step (compile time, median and spread of the step's wall time with
warm-up excluded, images/s, compilations), the step's FLOPs counted analytically (matmuls and
attention; backward = 2x forward) next to XLA's own count, achieved FLOP/s and MFU against a stated
peak, the host-side mask sampler and grain pipeline, and, where a checkout of the PyTorch release was
given, the release's mask collator and its own train step on the same settings. Every section records
its date, machine, versions and exact command; numbers from different machines or loads are not
comparable.
"""

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after the first call.")
_REFERENCE = flags.DEFINE_string("reference", None,
                                 "Checkout of facebookresearch/ijepa (holds src/): also time its collator and step.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Peak FLOP/s of the device in TFLOP/s, for MFU.")
_MEASURE_PEAK = flags.DEFINE_bool("measure_peak", False,
                                  "Use the rate of a jitted fp32 matmul measured in this run as the peak for MFU.")
_CHIP_PEAK = flags.DEFINE_bool("chip_peak", False,
                                "MFU against the chip's dense peak for the config's dtype (CHIP_PEAK_TFLOPS).")
_FIT_BATCH = flags.DEFINE_list(
    "fit_batch", None, "Per-device batches to try, largest first: the first whose compiled step fits the device's "
    "memory (memory_analysis vs memory_stats()['bytes_limit']) is timed; config.batch_size is ignored.")
_PRECISION_CHECK = flags.DEFINE_bool("precision_check", False,
                                     "Also the first step's loss in float32 on the same batch and initial state.")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 4096, "Side of the square matrices of --measure_peak.")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 30,
                                         "Timed batches of the grain pipeline (many more than its prefetch buffer).")
_TORCH_THREADS = flags.DEFINE_list(
    "torch_threads", None, "torch thread counts for the release's step (default: torch's default, and 1 if that "
    "is more: on a busy machine a team of spinning threads can be far slower than one).")
_HOST_ONLY = flags.DEFINE_bool(
    "host_only", False, "Only the host side (our mask sampler, the grain pipeline, the release's collator): no "
    "train step is built, so it runs for configs too large for this machine, e.g. vit_h14's mask settings.")
_NOTE = flags.DEFINE_string("note", "", "A remark recorded with the results (e.g. what else ran on the machine).")
_OUT = flags.DEFINE_string("out", DEFAULT_OUT, "Markdown file the results section is appended to.")
flags.mark_flags_as_required(["config"])
USAGE = ("python experiments/benchmark.py --config=configs/NAME.py [--config.KEY=VALUE ...] [--steps=20] "
         "[--reference=PATH] [--peak_tflops=X | --chip_peak | --measure_peak] [--fit_batch=256,128] "
         "[--precision_check] [--out=FILE]")

# Dense (no sparsity) peak TFLOP/s per chip as jax names it (device_kind), for --chip_peak: bf16 and fp32
# (fp32: the tensor-core TF32 rate on NVIDIA parts, which XLA uses for fp32 matmuls by default; TPUs: bf16
# passes). From the vendors' data sheets (SXM parts for NVIDIA).
CHIP_PEAK_TFLOPS = (
    (r"H200", dict(bfloat16=989.4, float32=494.7)),
    (r"H100.*PCIe", dict(bfloat16=756.0, float32=378.0)),
    (r"H100", dict(bfloat16=989.4, float32=494.7)),
    (r"A100", dict(bfloat16=312.0, float32=156.0)),
    (r"L4$", dict(bfloat16=121.0, float32=60.0)),
    (r"TPU v4", dict(bfloat16=275.0, float32=275.0)),
    (r"TPU v5 lite|TPU v5e", dict(bfloat16=197.0, float32=197.0)),
    (r"TPU v5", dict(bfloat16=459.0, float32=459.0)),
    (r"TPU v6", dict(bfloat16=918.0, float32=918.0)),
)


def chip_peak(device_kind: str, dtype: str) -> float | None:
  """TFLOP/s of CHIP_PEAK_TFLOPS for a device_kind, or None for a chip not in the table."""
  import re
  for pattern, peaks in CHIP_PEAK_TFLOPS:
    if re.search(pattern, device_kind):
      return peaks[dtype]
  return None


# ============================================================================ timing helpers
def spread(times) -> dict:
  t = np.asarray(times, np.float64)
  q25, q75 = np.percentile(t, [25, 75])
  return dict(median=float(np.median(t)), min=float(t.min()), max=float(t.max()), iqr=float(q75 - q25), n=len(t))


def fmt_ms(s: dict) -> str:
  return (f"{1e3 * s['median']:.1f} ms (min {1e3 * s['min']:.1f}, max {1e3 * s['max']:.1f}, "
          f"IQR {1e3 * s['iqr']:.1f}; n={s['n']})")


def time_calls(fn, min_calls: int = 5, min_seconds: float = 1.0) -> list[float]:
  """Per-call wall times of fn(), at least `min_calls` calls and `min_seconds` in all."""
  times, start = [], time.perf_counter()
  while len(times) < min_calls or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def say(text: str) -> None:
  print(text, flush=True)


def eng(x: float) -> str:
  return f"{x:.3e}"


# ============================================================================ our step
def _memory_stats(device) -> dict:
  try:
    return device.memory_stats() or {}
  except Exception:  # backends without it (some CPU builds) raise instead of returning None
    return {}


def _needed_bytes(compiled) -> int | None:
  m = compiled.memory_analysis()
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
             + m.generated_code_size_in_bytes)


def bench_ours(config, sampler, steps: int, warmup: int, fit_batch=None) -> dict:
  """Times our step. fit_batch: per-device batches, largest first; the first that fits is used."""
  import flax.linen as nn
  import jax
  from ijepa_jax import sharding, train

  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  limit = _memory_stats(mesh.devices.flat[0]).get("bytes_limit")
  tried = []
  for per_device in fit_batch or []:
    config.batch_size = int(per_device) * dp
    compiled, needed, lower_s, compile_s = _compile(config, mesh, sampler)
    tried.append((int(per_device), needed))
    if limit is None or needed is None or needed <= 0.95 * limit:
      break
  if config.batch_size % dp:
    raise train.ConfigError(f"batch_size={config.batch_size} is not divisible by the data-parallel size {dp}: "
                            f"change --config.batch_size.")
  # The schedules' lengths shape only the optimizer's scalar functions, not the step's cost.
  total = int(config.total_steps) if config.total_steps > 0 else 100_000
  warm = min(max(int(config.warmup_steps), 0), total)
  _, _, init, train_step = train.build(config, mesh, sampler, total, warm)
  state = init()

  b, s, c = config.batch_size, config.data.image_size, config.data.channels
  rng = np.random.default_rng(config.seed)

  def make_batch():
    images = rng.integers(0, 256, size=(b, s, s, c), dtype=np.uint8)
    return sharding.global_batch({"images": images, "skipped": np.zeros((b,), np.int32), **sampler(rng, b)}, mesh)

  batches = [make_batch() for _ in range(4)]  # a few distinct mask sets, on device before timing starts
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    t0 = time.perf_counter()
    lowered = train_step.lower(state, batches[0])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  needed = _needed_bytes(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # An SPMD program's cost analysis counts one device's share: times the devices for the whole step.
  xla_flops = float(cost.get("flops", float("nan"))) * mesh.devices.size if cost else float("nan")

  t3 = time.perf_counter()
  state, m = train.run_step(train_step, mesh, config, state, batches[0])  # first call: dispatch caches
  jax.block_until_ready((state, m))
  first = time.perf_counter() - t3
  first_loss = float(m["loss"])
  for i in range(warmup):
    state, m = train.run_step(train_step, mesh, config, state, batches[(i + 1) % len(batches)])
  jax.block_until_ready((state, m))
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, m = train.run_step(train_step, mesh, config, state, batches[i % len(batches)])
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t)
  loss = float(m["loss"])
  stats = _memory_stats(mesh.devices.flat[0])
  return dict(lower_s=t1 - t0, compile_s=t2 - t1, first_call_s=first, times=spread(times),
              compiles=int(train_step._cache_size()), xla_flops=xla_flops, loss=loss, first_loss=first_loss,
              devices=f"{len(mesh.devices.flat)} x {mesh.devices.flat[0].device_kind}", mesh=dict(mesh.shape),
              device_kind=mesh.devices.flat[0].device_kind, needed_bytes=needed, fit_tried=tried,
              peak_bytes=stats.get("peak_bytes_in_use"), bytes_limit=stats.get("bytes_limit"))


def _compile(config, mesh, sampler):
  """(compiled, bytes it needs per device, lower s, compile s) of the train step at config.batch_size."""
  import flax.linen as nn
  import jax
  from ijepa_jax import sharding, train
  _, abstract_state, _, train_step = train.build(config, mesh, sampler, 100_000, 0)
  b, s, c = config.batch_size, config.data.image_size, config.data.channels
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh))
  batch = {"images": spec((b, s, s, c), np.uint8), "skipped": spec((b,), np.int32),
           **{k: spec((b, *shape), np.int32) for k, shape in sampler.example_shapes().items()}}
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    t0 = time.perf_counter()
    lowered = train_step.lower(abstract_state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
  return compiled, _needed_bytes(compiled), t1 - t0, time.perf_counter() - t1


def first_loss(config, sampler) -> float:
  """The loss of the first step (fresh state, the first batch bench_ours makes) under this config."""
  import jax
  from ijepa_jax import sharding, train
  mesh = sharding.make_mesh(config.mesh)
  _, _, init, train_step = train.build(config, mesh, sampler, 100_000, 0)
  b, s, c = config.batch_size, config.data.image_size, config.data.channels
  rng = np.random.default_rng(config.seed)
  images = rng.integers(0, 256, size=(b, s, s, c), dtype=np.uint8)
  batch = sharding.global_batch({"images": images, "skipped": np.zeros((b,), np.int32), **sampler(rng, b)}, mesh)
  _, m = train.run_step(train_step, mesh, config, init(), batch)
  return float(jax.device_get(m["loss"]))


def measure_peak(n: int, reps: int = 5) -> dict:
  """FLOP/s of a jitted fp32 n x n @ n x n matmul (median of `reps` after one warm-up)."""
  import jax
  import jax.numpy as jnp
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  bm = jax.random.normal(kb, (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, bm).block_until_ready()
  times = time_calls(lambda: f(a, bm).block_until_ready(), min_calls=reps, min_seconds=0.0)
  st = spread(times)
  return dict(n=n, times=st, flops_per_s=2.0 * n ** 3 / st["median"])


# ============================================================================ host pipeline
def bench_host(config, sampler, batches: int) -> dict:
  from ijepa_jax import data
  from ijepa_jax.errors import ConfigError
  b = config.batch_size
  rng = np.random.default_rng(config.seed)
  sampler_times = spread(time_calls(lambda: sampler(rng, b)))
  out = dict(sampler=sampler_times, sampler_rate=b / sampler_times["median"])
  try:
    dataset = data.make_pretrain_dataset(config, sampler)
    it = iter(dataset)
    t0 = time.perf_counter()
    for _ in range(3):  # start-up and the first batches, excluded
      next(it)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    elapsed = time.perf_counter() - t0
    del it, dataset
    out.update(pipeline_rate=batches * b / elapsed, pipeline_startup_s=startup, pipeline_batches=batches,
               pipeline_workers=int(config.data.num_workers),
               pipeline_prefetch=int(config.data.prefetch_buffer))
  except ConfigError as e:  # no data here: the step and the sampler are still measured
    out.update(pipeline_error=str(e))
  return out


# ============================================================================ the release
def release_collator_settings(config, sampler) -> tuple[dict, str | None]:
  """MaskCollator kwargs for our config, and why it cannot run them (None if it can)."""
  mk = config.mask
  kwargs = dict(input_size=int(config.data.image_size), patch_size=int(config.model.patch_size),
                enc_mask_scale=tuple(mk.context_scale), pred_mask_scale=tuple(mk.target_scale),
                aspect_ratio=tuple(mk.target_aspect), nenc=1, npred=int(mk.num_targets),
                min_keep=int(mk.min_keep), allow_overlap=False)
  # Its target-block loop never ends when a block can hold min_keep tokens or fewer; our sampler in
  # release mode computes that smallest block with the release's clamping.
  smallest = dataclasses.replace(sampler, mode="release").num_target
  if smallest <= kwargs["min_keep"]:
    return kwargs, (f"the release's MaskCollator would loop forever: target blocks of {smallest} tokens on the "
                    f"{sampler.grid}x{sampler.grid} grid are not more than min_keep={kwargs['min_keep']}")
  if tuple(mk.context_aspect) != (1.0, 1.0):
    return kwargs, f"the release's context blocks are square; mask.context_aspect={tuple(mk.context_aspect)}"
  return kwargs, None


def bench_release_collator(config, sampler, reference: str) -> dict:
  """The release's MaskCollator on our config's settings: mask sets/s (or why it cannot run them)."""
  sys.path.insert(0, reference)
  import logging as py_logging
  from src.masks.multiblock import MaskCollator  # the release's package 'src', from --reference
  py_logging.getLogger().setLevel(py_logging.WARNING)  # the release logs at INFO on the root logger
  kwargs, problem = release_collator_settings(config, sampler)
  if problem:
    return dict(skipped=problem)
  collator = MaskCollator(**kwargs)
  items = [0] * config.batch_size  # the collator also collates the batch it is given: a trivial one
  times = spread(time_calls(lambda: collator(items)))
  return dict(collator=times, collator_rate=config.batch_size / times["median"], collator_kwargs=kwargs,
              collator_fn=collator, items=items)


def bench_release(config, sampler, reference: str, steps: int, warmup: int, thread_counts) -> dict:
  coll = bench_release_collator(config, sampler, reference)  # puts --reference on sys.path
  if "skipped" in coll:
    return coll
  b, collator, items = config.batch_size, coll.pop("collator_fn"), coll.pop("items")
  import torch
  import torch.nn.functional as F
  import release_parity as rp   # experiments/: the release's models and step, built at run time
  import src.helper as helper   # the release's package 'src', from --reference
  import src.models.vision_transformer as vit
  from src.masks.utils import apply_masks
  from src.utils.logging import grad_logger
  from src.utils.tensors import repeat_interleave_batch

  m = config.model
  from ijepa_jax.models import make_models
  import jax.numpy as jnp
  encoder_j, predictor_j = make_models(m, config.data.image_size, config.data.channels, jnp.float32)
  size = dict(name="bench", image=int(config.data.image_size), patch=encoder_j.patch_size,
              channels=int(config.data.channels), width=encoder_j.width, depth=encoder_j.depth,
              heads=encoder_j.num_heads, mlp_ratio=encoder_j.mlp_dim / encoder_j.width,
              pred_width=predictor_j.width, pred_depth=predictor_j.depth, pred_heads=predictor_j.num_heads)
  enc, pred, target, _, _ = rp.release_models(torch, vit, helper, size, seed=int(config.seed))
  o = config.optim
  total = int(config.total_steps) if config.total_steps > 0 else 100_000
  warm = min(max(int(config.warmup_steps), 0), total)
  optimizer, _, scheduler, wd_scheduler = helper.init_opt(
      encoder=enc, predictor=pred, iterations_per_epoch=total, start_lr=o.start_lr, ref_lr=o.lr,
      final_lr=o.final_lr, warmup=warm / total, num_epochs=1, wd=o.weight_decay, final_wd=o.final_weight_decay,
      use_bfloat16=False)
  ema = tuple(o.ema)
  step_count = [0]

  # Masks from its collator, one set per step as its loader would deliver them; made before timing.
  runs = steps + warmup + 1
  masks = [collator(items)[1:] for _ in range(runs)]
  ctx_len = float(np.mean([me[0].shape[1] for me, _ in masks]))
  tgt_len = float(np.mean([mp[0].shape[1] for _, mp in masks]))
  torch.manual_seed(int(config.seed))
  images = ((torch.randint(0, 256, (b, config.data.channels, config.data.image_size, config.data.image_size))
             .float() / 255.0 - torch.tensor(config.data.mean).view(1, -1, 1, 1))
            / torch.tensor(config.data.std).view(1, -1, 1, 1))

  def release_train_step(masks_enc, masks_pred):
    """src/train.py's train_step: schedulers, forward/backward, AdamW, grad stats, zero_grad, EMA."""
    scheduler.step()
    wd_scheduler.step()
    loss = rp.release_step(torch, F, apply_masks, repeat_interleave_batch, enc, pred, target, images,
                           masks_enc, masks_pred)
    optimizer.step()
    grad_logger(enc.named_parameters())
    optimizer.zero_grad()
    with torch.no_grad():
      mom = min(ema[0] + step_count[0] * (ema[1] - ema[0]) / (total * 1.25), ema[1])  # train.py's schedule
      step_count[0] += 1
      for q, k in zip(enc.parameters(), target.parameters()):
        k.data.mul_(mom).add_((1.0 - mom) * q.detach().data)
    return float(loss)

  default_threads = torch.get_num_threads()
  by_threads = {}
  for threads in thread_counts or sorted({default_threads, 1}, reverse=True):
    torch.set_num_threads(int(threads))
    for i in range(warmup + 1):
      release_train_step(*masks[i])
    times = []
    for i in range(steps):
      t = time.perf_counter()
      loss = release_train_step(*masks[warmup + 1 + i])
      times.append(time.perf_counter() - t)
    by_threads[int(threads)] = spread(times)
  torch.set_num_threads(default_threads)
  best = min(by_threads, key=lambda k: by_threads[k]["median"])
  return dict(**coll, mlp_ratio=size["mlp_ratio"], by_threads=by_threads, best_threads=best, times=by_threads[best],
              default_threads=default_threads, torch=torch.__version__, context_len=ctx_len, target_len=tgt_len,
              loss=loss)


# ============================================================================ report
def markdown(r: dict) -> str:
  c, ours, flops = r["config"], r["ours"], r["flops"]
  b = c.batch_size
  lines = [f"## {r['date']}: {r['config_path']}, batch {b}", "",
           f"- machine: {r['machine']}; load average (1/5/15 min) {r['load_before']} before, "
           f"{r['load_after']} after",
           f"- versions: {r['versions']}",
           f"- command: `{r['command']}`"]
  if r["note"]:
    lines.append(f"- note: {r['note']}")
  lines += [f"- model: {c.data.image_size} px, patch {c.model.patch_size}, {c.data.channels} channel(s), "
            f"{r['grid']}x{r['grid']} grid; encoder {r['enc']}, predictor {r['pred']}; dtype {c.dtype}",
            f"- masks ({c.mask.mode} mode, min_keep {c.mask.min_keep}): {r['num_context']} context tokens, "
            f"{r['num_targets']} targets x {r['num_target']} tokens"]
  if ours is not None:
    lines += _step_rows(r)
  lines += _host_rows(r)
  lines.append("")
  return "\n".join(lines) + "\n"


def _step_rows(r: dict) -> list[str]:
  """Our step's section, and the release's step beside it when it ran."""
  c, ours, flops = r["config"], r["ours"], r["flops"]
  b = c.batch_size
  step_s = ours["times"]["median"]
  ours_rate = b / step_s
  achieved = flops["total"] * b / step_s
  lines = ["", "### Our train step (JAX, `ijepa_jax.train.build`)", "",
            "| quantity | value |", "|---|---|",
            f"| devices / mesh | {ours['devices']} / {ours['mesh']} |",
            f"| lower + compile | {ours['lower_s'] + ours['compile_s']:.2f} s (lower {ours['lower_s']:.2f} s, "
            f"compile {ours['compile_s']:.2f} s) |",
            f"| first call after compile (excluded) | {1e3 * ours['first_call_s']:.1f} ms |",
            f"| step time, median (spread) | {fmt_ms(ours['times'])} |",
            f"| images/s | {ours_rate:.1f} |",
            f"| compilations (train_step._cache_size()) | {ours['compiles']} |"]
  gib = lambda n: "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.1f} MiB"
  lines.append(f"| memory per device: compiled step needs / device peak in use / device limit | "
               f"{gib(ours['needed_bytes'])} / {gib(ours['peak_bytes'])} / {gib(ours['bytes_limit'])} |")
  if ours["fit_tried"]:
    tried = ", ".join(f"{b}: {gib(n)}" for b, n in ours["fit_tried"])
    lines.append(f"| --fit_batch: per-device batch -> compiled need (first that fits is timed) | {tried} |")
  if r.get("precision") is not None:
    p = r["precision"]
    lines.append(f"| first step's loss, {c.dtype} / float32 (same batch and init) | {p['ours']:.6f} / "
                 f"{p['float32']:.6f} (relative difference {abs(p['ours'] - p['float32']) / abs(p['float32']):.2e}) |")
  for name, v in flops.items():
    if name != "total":
      lines.append(f"| analytic FLOPs per image: {name} | {eng(v)} |")
  xla_per_image = ours["xla_flops"] / b
  lines += [f"| analytic FLOPs per image | {eng(flops['total'])} |",
            f"| XLA cost_analysis FLOPs per image (whole step / batch) | {eng(xla_per_image)} |",
            f"| XLA / analytic | {xla_per_image / flops['total']:.3f} |",
            f"| achieved (analytic FLOPs / median step) | {achieved / 1e9:.2f} GFLOP/s |"]
  peak = r.get("peak")
  if peak is not None:
    lines += [f"| peak | {peak['flops_per_s'] / 1e9:.2f} GFLOP/s ({peak['what']}) |",
              f"| MFU | {100 * achieved / peak['flops_per_s']:.1f}% |"]
  else:
    lines.append("| MFU | not computed: give --peak_tflops or --measure_peak |")
  rel = r.get("release")
  if rel is None or "times" not in rel:
    return lines
  kw = rel["collator_kwargs"]
  rel_rate = b / rel["times"]["median"]
  rel_flops = r["release_flops"]["total"]
  lines += ["", "### The release's train step (PyTorch, fp32 CPU, single process)", "",
              f"src/train.py's sequence per step: lr and wd schedulers, target encoder under no_grad + "
              f"F.layer_norm + apply_masks, context encoder, predictor, smooth-L1, backward, AdamW step, "
              f"grad_logger, zero_grad, EMA update; its VisionTransformer / VisionTransformerPredictor with the "
              f"same dims (mlp_ratio {rel['mlp_ratio']:g}), no DDP wrapper. Masks from its MaskCollator "
              f"(input {kw['input_size']}, patch {kw['patch_size']}, npred {kw['npred']}, min_keep "
              f"{kw['min_keep']} = the config's, corners drawn with the release's own off-by-one), made "
              f"before timing; its lengths vary per batch (truncated to the batch's shortest): mean "
              f"{rel['context_len']:.1f} context and {rel['target_len']:.1f} target tokens here.", "",
              "| quantity | value |", "|---|---|"]
  for threads, st in rel["by_threads"].items():
    default = " (torch's default, torch.get_num_threads())" if threads == rel["default_threads"] else ""
    lines += [f"| step time, {threads} torch thread(s){default}, median (spread) | {fmt_ms(st)} |",
              f"| images/s, {threads} torch thread(s) | {b / st['median']:.1f} |",
              f"| ours / release, images/s, {threads} torch thread(s) | {ours_rate * st['median'] / b:.2f}x |"]
  lines += [f"| release's fastest: {rel['best_threads']} torch thread(s) | {rel_rate:.1f} images/s |",
            f"| analytic FLOPs per image at its mean mask lengths | {eng(rel_flops)} |",
            f"| achieved (fastest) | {rel_flops * b / rel['times']['median'] / 1e9:.2f} GFLOP/s |"]
  if peak is not None:
    lines.append(f"| MFU | {100 * rel_flops * b / rel['times']['median'] / peak['flops_per_s']:.1f}% |")
  lines.append(f"| **ours / release's fastest, images/s** | **{ours_rate / rel_rate:.2f}x** |")
  # Its masks differ in length from ours (see above), so images/s compares different amounts of work.
  lines.append(f"| ours / release's fastest, achieved FLOP/s (work per image normalised) | "
               f"{achieved / (rel_flops * b / rel['times']['median']):.2f}x |")
  return lines


def _host_rows(r: dict) -> list[str]:
  """The mask sampler and the grain pipeline, and the release's collator on the same settings."""
  b, host, rel = r["config"].batch_size, r["host"], r.get("release")
  lines = ["", "### Host pipeline (this process)", "", "| quantity | value |", "|---|---|",
           f"| our mask sampler (numpy, one thread), batch {b} | {host['sampler_rate']:.0f} mask sets/s "
           f"({fmt_ms(host['sampler'])} per batch) |"]
  if "pipeline_rate" in host:
    lines.append(f"| grain pipeline (`make_pretrain_dataset`: read, crop, masks), {host['pipeline_batches']} "
                 f"batches after 3 excluded | {host['pipeline_rate']:.0f} images/s "
                 f"(num_workers {host['pipeline_workers']}, prefetch buffer {host['pipeline_prefetch']} batches; "
                 f"start-up {host['pipeline_startup_s']:.2f} s) |")
  else:
    lines.append(f"| grain pipeline | not measured: {host['pipeline_error']} |")
  if rel is not None and "skipped" in rel:
    lines += ["", f"Release: not run: {rel['skipped']}."]
  elif rel is not None:
    lines.append(f"| release MaskCollator (single process), batch {b} | {rel['collator_rate']:.0f} mask sets/s "
                 f"({fmt_ms(rel['collator'])} per batch) |")
    lines.append(f"| our sampler / release collator | {host['sampler_rate'] / rel['collator_rate']:.1f}x |")
  return lines


def append(out: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  new = not os.path.exists(out) or os.path.getsize(out) == 0
  with open(out, "a") as f:
    if new:
      f.write(HEADER + "\n")
    f.write(text)


# ============================================================================ main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _PEAK_TFLOPS.value is not None and _MEASURE_PEAK.value:
    print(f"error: give --peak_tflops or --measure_peak, not both.\nUsage: {USAGE}", file=sys.stderr)
    sys.exit(2)
  if _CHIP_PEAK.value and (_PEAK_TFLOPS.value is not None or _MEASURE_PEAK.value):
    print(f"error: give one of --peak_tflops, --chip_peak and --measure_peak.\nUsage: {USAGE}", file=sys.stderr)
    sys.exit(2)
  if any(not b.isdigit() or int(b) < 1 for b in _FIT_BATCH.value or []):
    print(f"error: --fit_batch={','.join(_FIT_BATCH.value)} must be positive per-device batches, largest "
          f"first, e.g. --fit_batch=256,128,64.\nUsage: {USAGE}", file=sys.stderr)
    sys.exit(2)
  if _STEPS.value < 1:
    print(f"error: --steps={_STEPS.value} must be at least 1.\nUsage: {USAGE}", file=sys.stderr)
    sys.exit(2)
  if any(not t.isdigit() or int(t) < 1 for t in _TORCH_THREADS.value or []):
    print(f"error: --torch_threads={','.join(_TORCH_THREADS.value)} must be positive integers.\nUsage: {USAGE}",
          file=sys.stderr)
    sys.exit(2)
  reference = os.path.abspath(_REFERENCE.value) if _REFERENCE.value else None
  if reference and not os.path.isfile(os.path.join(reference, "src", "models", "vision_transformer.py")):
    print(f"error: --reference={_REFERENCE.value} has no src/models/vision_transformer.py: "
          f"not a facebookresearch/ijepa checkout.", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  import flax
  import jax
  from ijepa_jax import train
  from ijepa_jax.errors import ConfigError
  from ijepa_jax.flops import config_flops
  from ijepa_jax.mask_strategies import make_sampler
  from ijepa_jax.models import make_models

  config = _CONFIG.value
  if config.cpu_devices > 0:  # as main.py does, before a backend starts
    jax.config.update("jax_num_cpu_devices", int(config.cpu_devices))
  load_before = record.loadavg()
  try:
    train.check_config(config)
    grid = config.data.image_size // config.model.patch_size
    sampler = make_sampler(config.mask, grid)
    enc, pred = make_models(config.model, config.data.image_size, config.data.channels, train.DTYPES[config.dtype])
    flops = config_flops(config, sampler.num_context, sampler.num_targets, sampler.num_target)
    batch = f"per-device batch {','.join(_FIT_BATCH.value)} (the first that fits)" if _FIT_BATCH.value else \
        f"batch {config.batch_size}"
    say(f"benchmark: {grid}x{grid} grid, {batch}, {sampler.num_context} context tokens, "
        f"{sampler.num_targets} x {sampler.num_target} target tokens; analytic {eng(flops['total'])} FLOPs/image")
    ours, peak = None, None
    if not _HOST_ONLY.value:
      ours = bench_ours(config, sampler, _STEPS.value, _WARMUP.value, _FIT_BATCH.value)
      say(f"ours: compile {ours['lower_s'] + ours['compile_s']:.2f} s, step {fmt_ms(ours['times'])}, "
          f"{config.batch_size / ours['times']['median']:.1f} images/s, {ours['compiles']} compilation(s)")
    if _HOST_ONLY.value:
      pass
    elif _MEASURE_PEAK.value:
      p = measure_peak(_PEAK_SIZE.value)
      peak = dict(flops_per_s=p["flops_per_s"],
                  what=f"measured: jitted fp32 {p['n']}x{p['n']} matmul, median of {p['times']['n']}, "
                       f"{1e3 * p['times']['median']:.0f} ms each")
      say(f"peak: {p['flops_per_s'] / 1e9:.2f} GFLOP/s")
    elif _PEAK_TFLOPS.value is not None:
      peak = dict(flops_per_s=_PEAK_TFLOPS.value * 1e12, what=f"given: --peak_tflops={_PEAK_TFLOPS.value:g}")
    elif _CHIP_PEAK.value:
      tflops = chip_peak(ours["device_kind"], config.dtype)
      if tflops is None:
        say(f"--chip_peak: {ours['device_kind']!r} is not in CHIP_PEAK_TFLOPS; no MFU (give --peak_tflops)")
      else:
        peak = dict(flops_per_s=tflops * 1e12, what=f"{ours['device_kind']} dense {config.dtype} peak, "
                                                      f"{tflops:g} TFLOP/s (CHIP_PEAK_TFLOPS)")
    precision = None
    if _PRECISION_CHECK.value and ours is not None:
      fp32 = config.copy_and_resolve_references()
      fp32.dtype = "float32"
      if fp32.model.attention == "cudnn":
        fp32.model.attention = "xla"   # cuDNN's fused attention has no fp32 kernel
      precision = dict(ours=ours["first_loss"], float32=first_loss(fp32, sampler))
      say(f"first step's loss: {config.dtype} {precision['ours']:.6f}, float32 {precision['float32']:.6f}")
    host = bench_host(config, sampler, _PIPELINE_BATCHES.value)
    say(f"host: sampler {host['sampler_rate']:.0f} mask sets/s"
        + (f", grain pipeline {host['pipeline_rate']:.0f} images/s" if "pipeline_rate" in host else ""))
    release, release_flops, torch_version = None, None, None
    if reference and _HOST_ONLY.value:
      release = bench_release_collator(config, sampler, reference)
      release.pop("collator_fn", None), release.pop("items", None)
      if "skipped" not in release:
        say(f"release: collator {release['collator_rate']:.0f} mask sets/s")
    elif reference:
      release = bench_release(config, sampler, reference, _STEPS.value, _WARMUP.value,
                              [int(t) for t in _TORCH_THREADS.value or []])
      if "skipped" not in release and "times" in release:
        torch_version = release["torch"]
        release_flops = config_flops(config, int(round(release["context_len"])), sampler.num_targets,
                                     int(round(release["target_len"])))
        for threads, st in release["by_threads"].items():
          say(f"release: collator {release['collator_rate']:.0f} mask sets/s; {threads} torch thread(s): step "
              f"{fmt_ms(st)}, {config.batch_size / st['median']:.1f} images/s")
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _HOST_ONLY.value or ours is None:
    precision = None

  versions = f"jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}, "
  versions += f"torch {torch_version}, " if torch_version else "torch not used, "
  versions += f"Python {platform.python_version()}"
  result = dict(config=config, config_path=config_flags.get_config_filename(flags.FLAGS["config"]), date=record.utc_date(), machine=record.machine(),
                versions=versions, command=shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
                note=_NOTE.value, load_before=load_before, load_after=record.loadavg(), grid=grid,
                enc=f"{enc.width}x{enc.depth} ({enc.num_heads} heads, MLP {enc.mlp_dim})",
                pred=f"{pred.width}x{pred.depth} ({pred.num_heads} heads, MLP {pred.mlp_dim or 4 * pred.width})",
                num_context=sampler.num_context, num_targets=sampler.num_targets, num_target=sampler.num_target,
                ours=ours, flops=flops, peak=peak, host=host, release=release, release_flops=release_flops,
                precision=precision)
  text = markdown(result)
  append(_OUT.value, text)
  say("")
  say(text)
  say(f"appended to {_OUT.value}")


if __name__ == "__main__":
  sys.path.insert(0, REPO)                                   # ijepa_jax without PYTHONPATH
  sys.path.insert(0, os.path.join(REPO, "experiments"))      # release_parity's helpers
  from ijepa_jax.errors import flags_parser
  app.run(main, flags_parser=flags_parser(USAGE))
