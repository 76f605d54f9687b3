"""How much memory a config's train step needs per device, without running it.

  python -m ijepa_jax.memory --config=configs/vit_h14.py --topology=v5p-128 [--num_slices=2]
      [--per_device_batch=32] [--hbm_gib=X] [--time] [--config.KEY=VALUE ...]

compiles the train step `main` runs (ijepa_jax.aot: train.build, the config's mesh and axis rules) with the
TPU compiler for a Cloud TPU slice, compile only, on any machine with libtpu installed (the tpu or test
extra; no TPU needed). Per device it prints the compiler's memory analysis (arguments, outputs,
aliased, temp, generated code, and their peak), the chip's HBM and the headroom, the compiler's
FLOPs next to the analytic count (ijepa_jax.flops), the collectives in the compiled program (ijepa_jax.hlo),
the lower and compile times, and when the step does not fit, what to change. --time adds the TPU compiler's
cost-model time for the step (ijepa_jax.cost_model: a lower bound, not a measurement), images/s per chip and
the implied MFU.

  python -m ijepa_jax.memory --config=configs/vit_h14.py --gpu=h100|h200|a100 [--gpus=8]
      [--per_device_batch=32] [--max_batch] [--hbm_gib=X]

does the same with XLA's GPU compiler for N NVIDIA GPUs (ijepa_jax.gpu_targets: the gpu_compile extra and a
CUDA toolkit's ptxas; no GPU needed), compile only and without autotuning, so its temp may differ from a
compile on a real GPU. --max_batch searches for the largest per-GPU batch that fits, one compile a probe.

  python -m ijepa_jax.memory --config=configs/vit_h14.py --devices=8,16,32,64 [--per_device_batch=32]

compiles instead with XLA:CPU for N fake CPU devices. What it measures exactly is the train state:
the bytes per device of parameters, optimizer state and EMA target as the axis rules shard them, and
`state ratio` = train-state bytes per device / (total / N) (1.0 = perfect FSDP). Its temp figure is
an XLA:CPU estimate, several times the TPU compiler's for the same step (XLA:CPU gathers every
layer's weights up front and ignores remat), so it cannot say whether a step fits an accelerator.
"""
from __future__ import annotations

import re
import sys
from typing import Callable

from ijepa_jax import cost_model, gpu_targets, hlo
from ijepa_jax.aot import GIB, compile_step, tpu_devices


def report(config, devices, per_device_batch: int | None = None) -> dict:
  """XLA:CPU (or whatever `devices` are): {'params', 'opt_state', 'target', 'state', 'state_total',
  'state_ratio', 'temp', 'peak', 'batch', 'mesh'}, bytes per device for a mesh over `devices`."""
  c = compile_step(config, devices, per_device_batch)
  out = c["report"]
  if c["compiled"] is None:
    raise RuntimeError(c["out_of_memory"])
  out["temp"] = int(getattr(c["compiled"].memory_analysis(), "temp_size_in_bytes", 0))
  out["peak"] = out["state"] + out["temp"]
  return out


def tpu_report(config, topology: str, num_slices: int = 1, per_device_batch: int | None = None,
               hbm_bytes: int | None = None) -> dict:
  """The train step compiled by the TPU compiler for `num_slices` slices named `topology` (v5p-128,
  v5litepod-16, ...). Bytes are per device; 'peak' = arguments + outputs - aliased + temp + generated
  code (the donated train state is counted once); 'flops' is the compiler's count for one device's
  program (low when it has loops: see while_loops), 'flops_analytic' the ijepa_jax.flops count for the
  device's share of the global batch."""
  from ijepa_jax import flops, tpu_topologies
  from ijepa_jax.errors import ConfigError
  try:
    slice_ = tpu_topologies.parse(topology)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if num_slices < 1:
    raise ConfigError(f"--num_slices={num_slices} must be at least 1.")
  devices = tpu_devices(slice_, num_slices)
  c = compile_step(config, devices, per_device_batch)
  out, compiled, config, sampler = c["report"], c["compiled"], c["config"], c["sampler"]
  out.update(topology=slice_.name, topology_name=slice_.topology_name, generation=slice_.generation,
             chips=slice_.chips, megacore=slice_.megacore, num_slices=num_slices, devices=len(devices),
             grad_accum_steps=int(config.grad_accum_steps), remat=str(config.model.remat))
  out["hbm"] = int(hbm_bytes) if hbm_bytes else slice_.hbm_bytes
  per_image = flops.config_flops(config, sampler.num_context, sampler.num_targets, sampler.num_target)["total"]
  out["flops_analytic"] = per_image * out["batch"] / len(devices)
  if compiled is None:
    return {**out, **out_of_memory_report(c["out_of_memory"])}
  out.update(_memory(compiled, out["hbm"]))
  out["flops"] = cost_model.compiler_flops(compiled)
  return out


def _memory(compiled, hbm: int) -> dict:
  """A compiled step's memory analysis per device, its peak against `hbm`, its collectives and loops."""
  stats = compiled.memory_analysis()
  out = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
  out["generated_code"] = int(stats.generated_code_size_in_bytes)
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
  out["headroom"] = hbm - out["peak"]
  out["fits"] = out["headroom"] >= 0
  text = compiled.as_text()
  out["collectives"] = hlo.collectives(text)
  out["while_loops"] = hlo.while_loops(text)
  return out


def gpu_report(config, gpu: str, count: int = 8, per_device_batch: int | None = None,
               hbm_bytes: int | None = None) -> dict:
  """The train step compiled by XLA's GPU compiler for `count` GPUs of kind `gpu` (gpu_targets.SPECS' names
  or a spec file's path), compile only, no autotuning. Bytes are per GPU, as in tpu_report; 'hbm' is the
  spec's device_memory_size unless `hbm_bytes` is given."""
  import jax
  from ijepa_jax.errors import ConfigError
  spec = gpu_targets.spec_text(gpu)
  hbm = int(hbm_bytes) if hbm_bytes else gpu_targets.hbm_bytes(spec)
  if not hbm:
    raise ConfigError(f"--gpu={gpu}: its spec gives no device_memory_size: give the GPU's memory with --hbm_gib.")
  devices = gpu_targets.gpu_devices(gpu, count)
  try:
    c = compile_step(config, devices, per_device_batch)
  except jax.errors.JaxRuntimeError as e:
    fix = gpu_targets.toolchain_error(str(e))
    if fix:
      raise ConfigError(fix) from None
    raise
  out, compiled, config = c["report"], c["compiled"], c["config"]
  out.update(gpu=gpu, gpu_name=gpu_targets.gpu_name(spec), devices=count, gpu_topology=gpu_targets.topology(count),
             grad_accum_steps=int(config.grad_accum_steps), remat=str(config.model.remat), hbm=hbm)
  if compiled is None:
    return {**out, **out_of_memory_report(c["out_of_memory"])}
  out.update(_memory(compiled, hbm))
  return out


def largest_batch(probe: Callable[[int | None], dict], per_device_batch: int | None = None, multiple: int = 1,
                  limit: int = 2 ** 16, say: Callable[[str], None] = print) -> dict:
  """The largest per-device batch whose step fits, one compile a probe: `probe(b)` is a report (gpu_report's)
  for b images per data-parallel device (None: the config's batch). From the first probe's batch, double
  while it fits (halve while it does not), then narrow the bracket down to `multiple` (grad_accum_steps:
  a per-device batch is a multiple of it), each probe where a straight line through the two ends' peaks
  crosses the HBM (memory is close to linear in the batch) or, after three probes in a row on the same side
  of it (memory far from linear), the bracket's middle. {'batch': the largest that fits (None if not even `multiple` does), 'report': its
  report, 'over': the smallest probed batch that does not fit (None if none up to `limit`), 'probes':
  {batch: report}}."""
  probes = {}

  def run(b):
    r = probe(b)
    dp = r["mesh"]["data"] * r["mesh"]["fsdp"]
    b = r["batch"] // dp
    probes[b] = r
    need = (f"{_fmt(r['peak'])} (temp {_fmt(r['temp'])})" if r.get("peak") is not None else
            f"more than {_fmt(r['hbm'])} (the compiler refused it)")
    say(f"per-device batch {b} (global {r['batch']}): peak {need} of {_fmt(r['hbm'])}: "
        f"{'fits' if r['fits'] else 'does not fit'} (compile {r['compile_s']:.0f} s)")
    return b, r["fits"]

  def down(b):
    return max(multiple, int(b) // multiple * multiple)

  b, fits = run(per_device_batch)
  lo, hi = (b, None) if fits else (None, b)
  while hi is None and lo < limit:
    b, fits = run(down(2 * lo))
    lo, hi = (b, None) if fits else (lo, b)
  while lo is None and hi > multiple:
    b, fits = run(down(hi // 2))
    lo, hi = (b, hi) if fits else (None, b)
  sides = []
  while lo is not None and hi is not None and hi - lo > multiple:
    p_lo, p_hi, hbm = probes[lo].get("peak"), probes[hi].get("peak"), probes[lo]["hbm"]
    if sides[-3:] not in ([True] * 3, [False] * 3) and p_lo is not None and p_hi is not None and p_hi > p_lo:
      b = down(lo + (hbm - p_lo) * (hi - lo) / (p_hi - p_lo))
    else:
      b, sides = down((lo + hi) // 2), []
    b, fits = run(min(max(b, lo + multiple), hi - multiple))
    lo, hi = (b, hi) if fits else (lo, b)
    sides.append(fits)
  return dict(batch=lo, report=probes[lo] if lo is not None else None, over=hi, probes=probes)


_GIB_FIGURE = r"([0-9.]+)([KMGT])"
_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def out_of_memory_report(message: str) -> dict:
  """What the TPU compiler's RESOURCE_EXHAUSTED says: it stops before a memory analysis exists, naming
  only the temporaries the program needs and the HBM it may use ("... HLO temporaries (69.92G) exceeds
  available HBM (31.25G)"). {'fits': False, 'compiler_error': its first line, 'temp', 'hbm_available'}
  (bytes; None where the message does not say)."""
  first = next((line.strip() for line in message.splitlines() if "RESOURCE_EXHAUSTED" in line), message.strip())
  out = {"fits": False, "compiler_error": first[first.index("RESOURCE_EXHAUSTED"):], "temp": None,
         "hbm_available": None}
  m = re.search(r"temporaries \(" + _GIB_FIGURE + r"\) exceeds available HBM \(" + _GIB_FIGURE + r"\)", first)
  if m:
    out["temp"] = int(float(m.group(1)) * _UNITS[m.group(2)])
    out["hbm_available"] = int(float(m.group(3)) * _UNITS[m.group(4)])
  return out


# ============================================================================ text
def _fmt(n: float) -> str:
  if abs(n) >= GIB / 4:
    return f"{n / GIB:.2f} GiB"
  return f"{n / 2 ** 20:.1f} MiB" if abs(n) >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def table(rows: dict[int, dict]) -> str:
  lines = ["| devices | mesh | global batch | params | opt state | EMA target | temp (XLA:CPU estimate) | "
           "state + temp | state ratio |",
           "|---|---|---|---|---|---|---|---|---|"]
  for n, r in rows.items():
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
    lines.append(f"| {n} | {mesh} | {r['batch']} | {_fmt(r['params'])} | {_fmt(r['opt_state'])} | "
                 f"{_fmt(r['target'])} | {_fmt(r['temp'])} | {_fmt(r['peak'])} | {r['state_ratio']:.3f} |")
  return "\n".join(lines)


def _model_line(c, state_total: int) -> str:
  width = f" ({c.model.width} wide)" if c.model.width > 0 else ""
  return (f"{c.model.name}{width}, {c.data.image_size} px, patch {c.model.patch_size}, dtype {c.dtype}, "
          f"remat {c.model.remat}, grad_accum_steps {c.grad_accum_steps}; train state {_fmt(state_total)} in all")


def advice(r: dict) -> list[str]:
  """What would bring a step that does not fit under the HBM, cheapest first."""
  options = []
  if r["remat"] != "full":
    options.append("--config.model.remat=full (keep only each block's input, recompute the rest in the backward pass)")
  per_device = r["batch"] // (r["mesh"]["data"] * r["mesh"]["fsdp"])
  k = r["grad_accum_steps"]
  if per_device % (2 * k) == 0:
    options.append(f"--config.grad_accum_steps={2 * k} (the activations of half as many images at a time, "
                   f"same update)")
  if "gpu" in r:
    more = 2 * r["devices"] if 2 * r["devices"] <= 8 else -(-2 * r["devices"] // 8) * 8   # hosts of 8 above 8
    options.append(f"--gpus={more} (more GPUs: less state and fewer images per GPU at the same global batch)")
  else:
    from ijepa_jax import tpu_topologies
    bigger = tpu_topologies.parse(r["topology"]).doubled()
    if bigger:
      options.append(f"--topology={bigger.name} (twice the chips: half the state and images per chip "
                     f"at the same global batch)")
  if per_device > 1:
    options.append(f"--per_device_batch={per_device // 2} (a smaller global batch: {r['batch'] // 2})")
  return options


def _out_of_memory_lines(r: dict, compiler: str, unit: str) -> list[str]:
  """A step the compiler refused: what it said, the train state we know from the shardings, the fix."""
  lines = [f"The {compiler} stopped: {r['compiler_error']}",
           f"Train state per device (from the shardings): params {_fmt(r['params'])}, opt state "
           f"{_fmt(r['opt_state'])}, EMA target {_fmt(r['target'])}", ""]
  if r["temp"] is not None:
    need = (f"temporaries alone need {_fmt(r['temp'])} of the {_fmt(r['hbm_available'])} the compiler may use "
            f"({_fmt(r['hbm'])} HBM per {unit})")
  else:
    need = f"more than the {_fmt(r['hbm'])} HBM per {unit}"
  lines.append(f"does not fit: the {compiler} ran out of HBM: {need}. To fit, try: " + "; or ".join(advice(r)))
  return lines


def _memory_rows(r: dict, unit: str, hbm_label: str) -> list[str]:
  return [f"| per {unit} | bytes |", "|---|---|",
          f"| arguments (train state + batch) | {_fmt(r['argument'])} |",
          f"| outputs (new train state + metrics) | {_fmt(r['output'])} |",
          f"| aliased (outputs in the donated arguments' buffers) | {_fmt(r['alias'])} |",
          f"| temp (activations, gradients, collective buffers) | {_fmt(r['temp'])} |",
          f"| generated code | {_fmt(r['generated_code'])} |",
          f"| peak = arguments + outputs - aliased + temp + code | {_fmt(r['peak'])} |",
          f"| {hbm_label} | {_fmt(r['hbm'])} |",
          f"| headroom | {_fmt(r['headroom'])} |", "",
          f"Train state per device (from the shardings): params {_fmt(r['params'])}, opt state "
          f"{_fmt(r['opt_state'])}, EMA target {_fmt(r['target'])}; state ratio {r['state_ratio']:.3f} "
          f"(1.0 = an even 1/{r['devices']} share)"]


def _collective_lines(r: dict) -> list[str]:
  windowed = r["while_loops"]["windowed_einsum"]
  lines = ["", "| collective | count | bytes per device | device groups of |", "|---|---|---|---|"]
  for name, e in sorted(r["collectives"].items()):
    groups = ", ".join(map(str, e["group_sizes"])) or "-"
    lines.append(f"| {name} | {e['count']} | {_fmt(e['bytes'])} | {groups} |")
  if not r["collectives"]:
    lines.append("| (none) | 0 | - | - |")
  lines.append("(count: ops in the program text, an op in a loop body once; bytes: their results. Windowed "
               "einsums move FSDP shards with collective-permutes.)" if windowed else
               "(count: ops in the program text, an op in a loop body once; bytes: their results)")
  return lines + [""]


def _fit_line(r: dict, unit: str) -> str:
  if r["fits"]:
    return f"fits: peak {_fmt(r['peak'])} of {_fmt(r['hbm'])} per {unit} ({_fmt(r['headroom'])} headroom)"
  return (f"does not fit: peak {_fmt(r['peak'])} > {_fmt(r['hbm'])} per {unit}, {_fmt(-r['headroom'])} over. "
          f"To fit, try: " + "; or ".join(advice(r)))


def tpu_text(config, r: dict, libtpu_version: str) -> str:
  mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
  slices = f"{r['num_slices']} slices of " if r["num_slices"] > 1 else ""
  kind = "megacore: 2 TensorCores per chip = 1 device" if r["megacore"] else "1 TensorCore per chip"
  per_device = r["batch"] // r["devices"]
  lines = [_model_line(config, r["state_total"]), "",
           f"{slices}{r['topology']} ({r['topology_name']}, {r['chips']} chips, {kind}): {r['devices']} devices, "
           f"mesh {mesh}, global batch {r['batch']} ({per_device} per device)",
           f"TPU compiler, compile only (libtpu {libtpu_version}): lower {r['lower_s']:.1f} s, "
           f"compile {r['compile_s']:.1f} s", ""]
  if "compiler_error" in r:
    return "\n".join(lines + _out_of_memory_lines(r, "TPU compiler", "chip"))
  lines += _memory_rows(r, "device", f"HBM per chip ({r['generation']})")
  lines.append(f"FLOPs per device per step: compiler {r['flops']:.4g}, analytic {r['flops_analytic']:.4g} "
               f"(matmuls + attention; ratio {r['flops'] / r['flops_analytic']:.3f})")
  loops = r["while_loops"]
  if loops["windowed_einsum"]:
    lines.append(f"  the compiled step has {loops['windowed_einsum']} windowed einsums (matmuls looped over the "
                 f"shards of an FSDP weight or gradient): the compiler counts each loop's body once, so its "
                 f"figure is low")
  if r["grad_accum_steps"] > 1:
    lines.append(f"  with grad_accum_steps={r['grad_accum_steps']} the compiler counts the micro-batch scan's "
                 f"body once, not {r['grad_accum_steps']} times: its figure is low")
  return "\n".join(lines + _collective_lines(r) + [_fit_line(r, "chip")])


GPU_LABEL = "XLA GPU compiler, compile only (no autotuning: temp may differ from a real GPU)"
JAX_GPU_MEMORY_FRACTION = 0.75   # what jax preallocates of a GPU's memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says


def gpu_text(config, r: dict, versions: str) -> str:
  """gpu_report as text; `versions`: 'jax 0.10.2, jax-cuda12-plugin 0.10.2'."""
  mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
  hosts = "one host" if r["devices"] <= 8 else f"{r['devices'] // 8} hosts of 8"
  lines = [_model_line(config, r["state_total"]), "",
           f"{r['devices']} x {r['gpu_name']} (topology {r['gpu_topology']}, {hosts}): mesh {mesh}, global batch "
           f"{r['batch']} ({r['batch'] // r['devices']} per GPU)",
           f"{GPU_LABEL}; {versions}: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s", ""]
  if "compiler_error" in r:
    return "\n".join(lines + _out_of_memory_lines(r, "XLA GPU compiler", "GPU"))
  lines += _memory_rows(r, "GPU", f"HBM per GPU ({r['gpu_name']}{', from its spec' if r['gpu'] in gpu_targets.SPECS else ''})")
  lines += _collective_lines(r) + [_fit_line(r, "GPU")]
  default = JAX_GPU_MEMORY_FRACTION * r["hbm"]
  if r["peak"] > default:
    lines.append(f"  jax preallocates {JAX_GPU_MEMORY_FRACTION:.0%} of a GPU's memory ({_fmt(default)}) by default: "
                 f"above that, run with XLA_PYTHON_CLIENT_MEM_FRACTION raised (e.g. .95)")
  return "\n".join(lines)


def parse_gib(text: str) -> float:
  """'1.5 GiB' / '20.5 MiB' / '3.0 KiB' (as _fmt writes them) -> GiB."""
  value, unit = text.split()
  return float(value) * {"GiB": 1, "MiB": 2 ** -10, "KiB": 2 ** -20}[unit]


def parse_text(out: str) -> dict:
  """tpu_text or gpu_text read back (for scripts that run the CLI in a subprocess, as experiments/ do):
  {'temp', 'peak' (None when the compiler refused the step: RESOURCE_EXHAUSTED, then 'temp' is what it said
  it needs), 'hbm', 'fits', 'compile_s'}, bytes in GiB."""
  refused = re.search(r"temporaries alone need ([\d.]+ [GMK]iB)", out)
  hbm = re.search(r"\| HBM per [^|]*\| ([^|]+) \|", out) or re.search(r"\(([\d.]+ [GMK]iB) HBM per", out)
  return {"temp": parse_gib(refused.group(1)) if refused else
          parse_gib(re.search(r"\| temp \([^|]*\| ([^|]+) \|", out).group(1)),
          "peak": None if refused else parse_gib(re.search(r"\| peak [^|]*\| ([^|]+) \|", out).group(1)),
          "hbm": parse_gib(hbm.group(1)) if hbm else None,
          "fits": bool(re.search(r"^fits:", out, re.M)),
          "compile_s": float(re.search(r"compile ([\d.]+) s", out).group(1))}


# ============================================================================ CLI
def _usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _hbm() -> int | None:
  if _HBM_GIB.value is not None and _HBM_GIB.value <= 0:
    _usage_error(f"--hbm_gib={_HBM_GIB.value} must be positive.")
  return int(_HBM_GIB.value * GIB) if _HBM_GIB.value else None


def _main_tpu(config) -> None:
  import importlib.metadata
  from ijepa_jax.errors import ConfigError
  hbm = _hbm()
  print(f"compiling for {_NUM_SLICES.value} x {_TOPOLOGY.value} with the TPU compiler ...", flush=True)
  try:
    r = tpu_report(config, _TOPOLOGY.value, _NUM_SLICES.value, _PER_DEVICE_BATCH.value, hbm)
  except ConfigError as e:
    _usage_error(str(e))
  print()
  print(tpu_text(config, r, importlib.metadata.version("libtpu")))
  if _TIME.value and r.get("fits"):
    print(f"\nestimating the step time: 3 more compiles, unrolled ...", flush=True)
    try:
      t = cost_model.time_estimate(config, _TOPOLOGY.value, _NUM_SLICES.value, _PER_DEVICE_BATCH.value)
    except ConfigError as e:
      _usage_error(str(e))
    print(cost_model.time_text(t, r["generation"]))


def gpu_versions() -> str:
  import importlib.metadata
  out = []
  for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt"):
    try:
      out.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      pass
  return ", ".join(out)


def _main_gpu(config) -> None:
  from ijepa_jax.errors import ConfigError
  hbm = _hbm()
  gpu, count = _GPU.value, _GPUS.value
  print(f"compiling for {count} x {gpu} with XLA's GPU compiler ...", flush=True)
  try:
    if _MAX_BATCH.value:
      k = int(config.grad_accum_steps)
      found = largest_batch(lambda b: gpu_report(config, gpu, count, b, hbm), _PER_DEVICE_BATCH.value, multiple=k,
                            say=lambda line: print(line, flush=True))
    else:
      r = gpu_report(config, gpu, count, _PER_DEVICE_BATCH.value, hbm)
  except ConfigError as e:
    _usage_error(str(e))
  if _MAX_BATCH.value:
    if found["batch"] is None:
      print(f"\nno per-GPU batch fits: not even {found['over']} ({GPU_LABEL})")
      r = found["probes"][found["over"]]
    else:
      over = (f"{found['over']} does not" if found["over"] is not None else
              f"the search stopped at {found['batch']}")
      print(f"\nlargest per-GPU batch that fits: {found['batch']} ({over}; {GPU_LABEL})")
      r = found["report"]
  print()
  print(gpu_text(config, r, gpu_versions()))


def _main_cpu(config) -> None:
  from ijepa_jax.errors import ConfigError
  try:
    counts = [int(x) for x in _DEVICES.value.split(",") if x]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    _usage_error(f"--devices={_DEVICES.value!r}: give device counts such as 8,16,32,64")
  import jax
  jax.config.update("jax_num_cpu_devices", max(counts))
  rows = {}
  try:
    for n in counts:
      rows[n] = report(config, jax.devices()[:n], _PER_DEVICE_BATCH.value)
      r = rows[n]
      print(f"N={n}: state {_fmt(r['state'])}/device (ratio {r['state_ratio']:.3f}), temp {_fmt(r['temp'])} "
            f"(XLA:CPU estimate), compiled", flush=True)
  except ConfigError as e:
    _usage_error(str(e))
  print(f"\n{_model_line(config, rows[counts[0]]['state_total'])}\n")
  print(table(rows))
  print("\nXLA:CPU on fake CPU devices: the train-state columns are exact; temp is an XLA:CPU estimate, "
        "not what a TPU or GPU needs (for that: --topology=v5p-128 or --gpu=h100 etc.).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  present = lambda name: flags.FLAGS[name].present
  if _TOPOLOGY.value is not None and _GPU.value is not None:
    _usage_error("--topology and --gpu are exclusive: --topology compiles for a TPU slice, --gpu for NVIDIA GPUs.")
  if (_TOPOLOGY.value is not None or _GPU.value is not None) and present("devices"):
    _usage_error(f"--{'topology' if _TOPOLOGY.value is not None else 'gpu'} and --devices are exclusive: "
                 f"--topology compiles for a TPU slice, --gpu for NVIDIA GPUs, --devices for N fake CPU devices.")
  if _TOPOLOGY.value is None and (present("num_slices") or present("time")):
    _usage_error("--num_slices and --time go with --topology (e.g. --topology=v5p-128 --num_slices=2).")
  if _GPU.value is None and (present("gpus") or present("max_batch")):
    _usage_error("--gpus and --max_batch go with --gpu (e.g. --gpu=h100 --gpus=8 --max_batch).")
  if _TOPOLOGY.value is None and _GPU.value is None and present("hbm_gib"):
    _usage_error("--hbm_gib goes with --topology or --gpu (e.g. --topology=v5p-128 --hbm_gib=80).")
  # Compile only: never start a TPU or GPU runtime (nor take one a training job is using); the TPU compiler
  # runs from libtpu on its own, the GPU compiler from the CUDA plugin.
  import jax
  jax.config.update("jax_platforms", "cpu")
  if _TOPOLOGY.value is not None:
    _main_tpu(_CONFIG.value)
  elif _GPU.value is not None:
    _main_gpu(_CONFIG.value)
  else:
    _main_cpu(_CONFIG.value)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  from ijepa_jax.errors import flags_parser
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
  _TOPOLOGY = flags.DEFINE_string("topology", None, "A Cloud TPU slice to compile for: v4-N, v5p-N, "
                                  "v5litepod-N (or v5e-N), v6e-N. Needs libtpu (pip install -e '.[tpu]').")
  _NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "With --topology: that many slices (multislice over DCN; "
                                     "config.mesh_dcn sizes the mesh across them).")
  _GPU = flags.DEFINE_string("gpu", None, "NVIDIA GPUs to compile for: h100 (SXM), h200, a100 (SXM4 80GB), or the "
                             "path of an XLA GPU spec file (.txtpb). Needs pip install -e '.[gpu_compile]'.")
  _GPUS = flags.DEFINE_integer("gpus", 8, "With --gpu: GPUs in the mesh (1 to 8 on one host, else hosts of 8).")
  _MAX_BATCH = flags.DEFINE_bool("max_batch", False, "With --gpu: search for the largest per-GPU batch that fits "
                                 "(one compile a probe, from --per_device_batch or the config's).")
  _HBM_GIB = flags.DEFINE_float("hbm_gib", None, "With --topology or --gpu: memory per chip / GPU to judge the fit "
                                "against (default: the chip's, the GPU spec's).")
  _TIME = flags.DEFINE_bool("time", False, "With --topology: also the TPU cost model's step time, images/s per "
                            "chip and MFU (3 more compiles, unrolled at small depths).")
  _DEVICES = flags.DEFINE_string("devices", "8,16,32,64", "Comma-separated fake CPU device counts (XLA:CPU mode).")
  _PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", None,
                                           "Images per data-parallel device (default: the config's batch).")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=flags_parser(
      "python -m ijepa_jax.memory --config=configs/NAME.py (--topology=v5p-128 [--num_slices=2] "
      "[--hbm_gib=X] [--time] | --gpu=h100 [--gpus=8] [--max_batch] [--hbm_gib=X] | --devices=8,16,32,64) "
      "[--per_device_batch=32]"))
