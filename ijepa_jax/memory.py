"""How much memory and compute a config's train step needs per device, without running it.

  python -m ijepa_jax.memory --config=configs/vit_h14.py --topology=v5p-128 [--num_slices=2]
      [--per_device_batch=32] [--hbm_gib=X] [--time] [--config.KEY=VALUE ...]

compiles the train step `main` runs (train.build, the config's mesh and axis rules) with the TPU
compiler for a Cloud TPU slice, compile only, on any machine with libtpu installed (the tpu or test
extra; no TPU needed). Per device it prints the compiler's memory analysis (arguments, outputs,
aliased, temp, generated code, and their peak), the chip's HBM and the headroom, the compiler's
FLOPs next to the analytic count (ijepa_jax.flops), the collectives in the compiled program, the
lower and compile times, and when the step does not fit, what to change. --time adds the TPU compiler's
cost-model time for the step (a lower bound, not a measurement), images/s per chip and the implied MFU.

  python -m ijepa_jax.memory --config=configs/vit_h14.py --devices=8,16,32,64 [--per_device_batch=32]

compiles instead with XLA:CPU for N fake CPU devices. What it measures exactly is the train state:
the bytes per device of parameters, optimizer state and EMA target as the axis rules shard them, and
`state ratio` = train-state bytes per device / (total / N) (1.0 = perfect FSDP). Its temp figure is
an XLA:CPU estimate, several times the TPU compiler's for the same step (XLA:CPU gathers every
layer's weights up front and ignores remat), so it cannot say whether a step fits an accelerator.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time

import numpy as np

GIB = 2 ** 30


def _bytes_per_device(tree) -> int:
  """Sum over leaves of the bytes of one shard, from each leaf's sharding (ShapeDtypeStruct leaves)."""
  import jax
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def _bytes_total(tree) -> int:
  import jax
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# ============================================================================ one compile of the train step
def lower_step(config, devices, per_device_batch: int | None = None) -> dict:
  """The train step of train.build for this config on a mesh over `devices`, lowered for abstract
  inputs (nothing allocated): {'lowered', 'lower_s', 'abstract_state', 'config', 'sampler', 'mesh'}.
  Two configs whose lowered texts are equal compile to the same program."""
  import flax.linen as nn
  import jax
  import ml_collections
  from ijepa_jax import sharding, train
  from ijepa_jax.mask_strategies import make_sampler
  config = ml_collections.ConfigDict(config.to_dict())
  mesh = sharding.make_mesh(config.mesh, devices, config.get("mesh_dcn"))
  dp = sharding.data_parallel_size(mesh)
  if per_device_batch:
    config.batch_size = per_device_batch * dp
  train.check_config(config)
  train.check_accumulation(config, dp)
  d = config.data
  sampler = make_sampler(config.mask, d.image_size // config.model.patch_size)
  _, abstract_state, _, step = train.build(config, mesh, sampler, total_steps=1000, warmup_steps=100)
  batch = train.abstract_batch(config, sampler, mesh)   # the largest context bucket: num_context
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    t0 = time.perf_counter()
    lowered = step.lower(abstract_state, batch)
  return dict(lowered=lowered, lower_s=time.perf_counter() - t0, abstract_state=abstract_state,
              config=config, sampler=sampler, mesh=mesh)


def _compile(config, devices, per_device_batch: int | None) -> dict:
  """lower_step's program compiled; with the train-state bytes per device from the shardings."""
  import jax
  low = lower_step(config, devices, per_device_batch)
  abstract_state, config, mesh = low["abstract_state"], low["config"], low["mesh"]
  t0 = time.perf_counter()
  try:
    compiled, out_of_memory = low["lowered"].compile(), None
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a program that cannot fit its HBM
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    compiled, out_of_memory = None, str(e)
  compile_s = time.perf_counter() - t0
  parts = {"params": abstract_state.params, "opt_state": abstract_state.opt_state, "target": abstract_state.target}
  out = {k: _bytes_per_device(v) for k, v in parts.items()}
  out["state"] = sum(out.values())
  out["state_total"] = sum(_bytes_total(v) for v in parts.values())
  out["state_ratio"] = out["state"] / (out["state_total"] / len(devices))
  out.update(batch=config.batch_size, mesh=dict(mesh.shape), lower_s=low["lower_s"], compile_s=compile_s)
  return dict(report=out, compiled=compiled, out_of_memory=out_of_memory, config=config,
              sampler=low["sampler"], mesh=mesh)


def report(config, devices, per_device_batch: int | None = None) -> dict:
  """XLA:CPU (or whatever `devices` are): {'params', 'opt_state', 'target', 'state', 'state_total',
  'state_ratio', 'temp', 'peak', 'batch', 'mesh'}, bytes per device for a mesh over `devices`."""
  c = _compile(config, devices, per_device_batch)
  out = c["report"]
  if c["compiled"] is None:
    raise RuntimeError(c["out_of_memory"])
  out["temp"] = int(getattr(c["compiled"].memory_analysis(), "temp_size_in_bytes", 0))
  out["peak"] = out["state"] + out["temp"]
  return out


# ============================================================================ the TPU compiler
def _quiet_libtpu(accelerator_type: str) -> None:
  """Before libtpu starts: compile-only needs no TPU, so give it the values it would otherwise look
  up (and warn about: TPU_ACCELERATOR_TYPE, TPU_WORKER_HOSTNAMES), and let it start while another
  process holds /tmp/libtpu_lockfile."""
  os.environ["TPU_ACCELERATOR_TYPE"] = accelerator_type
  os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
  os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"


def tpu_devices(slice_, num_slices: int = 1) -> list:
  """Compile-only TPU devices of `num_slices` copies of the slice (each with a `slice_index`)."""
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    from ijepa_jax.errors import ConfigError
    raise ConfigError("--topology needs libtpu, the TPU compiler: pip install -e '.[tpu]' (no TPU needed).")
  _quiet_libtpu(slice_.name)
  from jax.experimental import topologies
  return list(topologies.get_topology_desc(**slice_.topology_kwargs(num_slices)).devices)


_COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "ragged-all-to-all",
                "collective-permute", "collective-broadcast")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
             "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) ([a-z][a-z0-9-]*)\((.*)$")


def _array_bytes(type_text: str) -> int:
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]", type_text):
    size = _ITEMSIZE.get(dtype, 1)  # f8 variants: one byte
    total += size * math.prod(int(x) for x in dims.split(",") if x)
  return int(total)


def _top_level(type_text: str) -> list[str]:
  """The elements of a tuple type '(a, (b, c), d)'; [type_text] for an array type."""
  t = type_text.strip()
  if not t.startswith("("):
    return [t]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(t):
    if ch in "({[":
      depth += 1
    elif ch in ")}]":
      depth -= 1
    elif ch == "," and depth == 1:
      parts.append(t[start:i])
      start = i + 1
  parts.append(t[start:-1])
  return [p for p in (q.strip() for q in parts) if p]


def _group_size(rest: str) -> int | None:
  """How many devices each of the op's groups has, from its replica_groups in any of XLA's forms."""
  # mesh['a'=4,'b'=2][, device_ids=(...)] {'a'}: groups along the named axes of XLA's own device mesh
  m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", rest)
  if m:
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
    return math.prod(sizes[a] for a in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)  # iota form: [groups, size]<=[...]
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", rest)
  if m:
    return len([x for x in m.group(1).split(",") if x])
  return None


def collectives(hlo_text: str) -> dict[str, dict]:
  """The collectives in a compiled HLO module's text: {op: {'count', 'bytes', 'group_sizes'}}, where
  bytes is each op's result per device (for async '-start' ops, the result part), summed over the ops
  as they appear in the program (an op inside a loop body counts once), and group_sizes the sizes of
  the device groups it runs over. Transfers between slices (TPU multislice: send ops to the
  'megascale' DCN runtime) appear as '<kind> across slices (DCN)'."""
  out: dict[str, dict] = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    type_text, op, rest = m.groups()
    if op == "send" and "_xla_megascale_transfer_type" in rest:
      kind = re.search(r'_xla_megascale_transfer_type="([A-Z_]+)"', rest).group(1)
      name, nbytes, size = f"{kind.lower().replace('_', '-')} across slices (DCN)", \
          _array_bytes(_top_level(type_text)[0]), None
    else:
      base = op[:-len("-start")] if op.endswith("-start") else op
      if base not in _COLLECTIVES:
        continue
      parts = _top_level(type_text)
      if op.endswith("-start") and base in ("all-gather", "collective-permute") and len(parts) > 1:
        parts = parts[1:2]   # (operand, result[, context]): the result
      name, nbytes, size = base, sum(_array_bytes(p) for p in parts), _group_size(rest)
    entry = out.setdefault(name, {"count": 0, "bytes": 0, "group_sizes": set()})
    entry["count"] += 1
    entry["bytes"] += nbytes
    if size:
      entry["group_sizes"].add(size)
  for entry in out.values():
    entry["group_sizes"] = sorted(entry["group_sizes"])
  return out


def while_loops(hlo_text: str) -> dict[str, int]:
  """{'all': while loops in a compiled module, 'windowed_einsum': those that are XLA's windowed einsums
  (a matmul looped over the shards of an FSDP weight or gradient as collective-permutes bring them,
  in place of one all-gather or reduce-scatter)}. Cost analysis counts a loop's body once."""
  bodies = re.findall(r" while\(.*?body=%([^ ,]+)", hlo_text)
  return {"all": len(bodies), "windowed_einsum": sum("windowed_dot_general" in b for b in bodies)}


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
  c = _compile(config, devices, per_device_batch)
  out, compiled, config, sampler = c["report"], c["compiled"], c["config"], c["sampler"]
  out.update(topology=slice_.name, topology_name=slice_.topology_name, generation=slice_.generation,
             chips=slice_.chips, megacore=slice_.megacore, num_slices=num_slices, devices=len(devices),
             grad_accum_steps=int(config.grad_accum_steps), remat=str(config.model.remat))
  out["hbm"] = int(hbm_bytes) if hbm_bytes else slice_.hbm_bytes
  per_image = flops.config_flops(config, sampler.num_context, sampler.num_targets, sampler.num_target)["total"]
  out["flops_analytic"] = per_image * out["batch"] / len(devices)
  if compiled is None:
    return {**out, **out_of_memory_report(c["out_of_memory"])}
  stats = compiled.memory_analysis()
  memory = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
  memory["generated_code"] = int(stats.generated_code_size_in_bytes)
  out.update(memory)
  out["peak"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"] + memory["generated_code"]
  out["headroom"] = out["hbm"] - out["peak"]
  out["fits"] = out["headroom"] >= 0
  out["flops"] = _compiler_flops(compiled)
  hlo = compiled.as_text()
  out["collectives"] = collectives(hlo)
  out["while_loops"] = while_loops(hlo)
  return out


def _cost(compiled) -> dict:
  """cost_analysis() of one device's program (older jax returns a list of one)."""
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def _compiler_flops(compiled) -> float:
  """The FLOPs of one device's program, as the compiler counts them (NaN where it gives no cost analysis)."""
  cost = _cost(compiled)
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _optimal_seconds(compiled) -> float:
  """The TPU cost model's time for one device's program: cost_analysis()['optimal_seconds'], plus 1 s per
  ConcatBitcast (v4 and v6e programs join fp32 weight slices with it and the model prices each at -1 s;
  experiments/results/eval_cost.md)."""
  bitcasts = len(re.findall(r'custom_call_target="ConcatBitcast"', compiled.as_text()))
  return float(_cost(compiled)["optimal_seconds"]) + bitcasts


def time_estimate(config, topology: str, num_slices: int = 1, per_device_batch: int | None = None) -> dict:
  """The TPU compiler's cost-model time for the config's train step: a lower bound, not a measurement.

  The cost model counts a loop's body once, so a scanned layer stack would be costed as one block: the step is
  compiled unrolled (scan_layers=False) at encoder / predictor depths (1, 1), (2, 1) and (1, 2) and extrapolated
  linearly to the config's depths (each block the same program). Returns {'step_s', 'encoder_block_s',
  'predictor_block_s', 'depths', 'images_per_s_per_chip', 'mfu' (the step's analytic FLOPs over the step time at
  the chip's bf16 peak), 'peak_flops', 'flops_per_image' (analytic), 'compiler_flops_per_image' (the compiler's
  count, extrapolated the same way)}."""
  import ml_collections
  from ijepa_jax import flops, tpu_topologies
  from ijepa_jax import state as state_lib
  from ijepa_jax.errors import ConfigError
  slice_ = tpu_topologies.parse(topology)
  devices = tpu_devices(slice_, num_slices)
  encoder, predictor = state_lib.models(config)
  depths = (encoder.depth, predictor.depth)

  def seconds(depth: int, predictor_depth: int) -> tuple[float, float, dict]:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.scan_layers, c.model.depth, c.model.predictor_depth = False, depth, predictor_depth
    compiled = _compile(c, devices, per_device_batch)
    if compiled["compiled"] is None:
      raise ConfigError(f"the step does not fit {topology} even with {depth} encoder block(s): no time estimate.")
    return _optimal_seconds(compiled["compiled"]), _compiler_flops(compiled["compiled"]), compiled

  (base, base_flops, low), (two_enc, enc_flops, _), (two_pred, pred_flops, _) = (
      seconds(1, 1), seconds(2, 1), seconds(1, 2))
  extrapolate = lambda one, enc, pred: one + (depths[0] - 1) * (enc - one) + (depths[1] - 1) * (pred - one)
  encoder_block, predictor_block = two_enc - base, two_pred - base
  step = extrapolate(base, two_enc, two_pred)
  sampler, batch = low["sampler"], low["report"]["batch"]
  per_image = flops.config_flops(config, sampler.num_context, sampler.num_targets, sampler.num_target)["total"]
  peak = tpu_topologies.PEAK_BF16_FLOPS[slice_.generation]
  chips = slice_.chips * num_slices
  return dict(step_s=step, encoder_block_s=encoder_block, predictor_block_s=predictor_block, depths=depths,
              images_per_s_per_chip=batch / chips / step, mfu=per_image * batch / chips / step / peak,
              peak_flops=peak, grad_accum_steps=int(config.grad_accum_steps), flops_per_image=per_image,
              compiler_flops_per_image=extrapolate(base_flops, enc_flops, pred_flops) * len(devices) / batch)


def time_text(t: dict, generation: str) -> str:
  lines = [f"TPU compiler's cost model (a lower bound on time, not a measurement; the step compiled unrolled at "
           f"encoder / predictor depths (1, 1), (2, 1), (1, 2), extrapolated to {t['depths']}): step "
           f"{t['step_s']:.4g} s, {t['images_per_s_per_chip']:.0f} images/s per chip, MFU {100 * t['mfu']:.0f}% "
           f"(the step's analytic FLOPs at {generation}'s {t['peak_flops'] / 1e12:.0f} TFLOP/s bf16); per block: "
           f"encoder {t['encoder_block_s']:.3g} s, predictor {t['predictor_block_s']:.3g} s"]
  if t["grad_accum_steps"] > 1:
    lines.append(f"  with grad_accum_steps={t['grad_accum_steps']} the micro-batch loop is counted once: the "
                 f"step takes about {t['grad_accum_steps']}x longer")
  return "\n".join(lines)


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
  from ijepa_jax import tpu_topologies
  bigger = tpu_topologies.parse(r["topology"]).doubled()
  if bigger:
    options.append(f"--topology={bigger.name} (twice the chips: half the state and images per chip "
                   f"at the same global batch)")
  if per_device > 1:
    options.append(f"--per_device_batch={per_device // 2} (a smaller global batch: {r['batch'] // 2})")
  return options


def _out_of_memory_lines(r: dict) -> list[str]:
  """A step the TPU compiler refused: what it said, the train state we know from the shardings, the fix."""
  lines = [f"The TPU compiler stopped: {r['compiler_error']}",
           f"Train state per device (from the shardings): params {_fmt(r['params'])}, opt state "
           f"{_fmt(r['opt_state'])}, EMA target {_fmt(r['target'])}", ""]
  if r["temp"] is not None:
    need = (f"temporaries alone need {_fmt(r['temp'])} of the {_fmt(r['hbm_available'])} the compiler may use "
            f"({_fmt(r['hbm'])} HBM per chip)")
  else:
    need = f"more than the {_fmt(r['hbm'])} HBM per chip"
  lines.append(f"does not fit: the TPU compiler ran out of HBM: {need}. To fit, try: " + "; or ".join(advice(r)))
  return lines


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
    return "\n".join(lines + _out_of_memory_lines(r))
  lines += ["| per device | bytes |", "|---|---|",
            f"| arguments (train state + batch) | {_fmt(r['argument'])} |",
            f"| outputs (new train state + metrics) | {_fmt(r['output'])} |",
            f"| aliased (outputs in the donated arguments' buffers) | {_fmt(r['alias'])} |",
            f"| temp (activations, gradients, collective buffers) | {_fmt(r['temp'])} |",
            f"| generated code | {_fmt(r['generated_code'])} |",
            f"| peak = arguments + outputs - aliased + temp + code | {_fmt(r['peak'])} |",
            f"| HBM per chip ({r['generation']}) | {_fmt(r['hbm'])} |",
            f"| headroom | {_fmt(r['headroom'])} |", "",
            f"Train state per device (from the shardings): params {_fmt(r['params'])}, opt state "
            f"{_fmt(r['opt_state'])}, EMA target {_fmt(r['target'])}; state ratio {r['state_ratio']:.3f} "
            f"(1.0 = an even 1/{r['devices']} share)",
            f"FLOPs per device per step: compiler {r['flops']:.4g}, analytic {r['flops_analytic']:.4g} "
            f"(matmuls + attention; ratio {r['flops'] / r['flops_analytic']:.3f})"]
  loops = r["while_loops"]
  if loops["windowed_einsum"]:
    lines.append(f"  the compiled step has {loops['windowed_einsum']} windowed einsums (matmuls looped over the "
                 f"shards of an FSDP weight or gradient): the compiler counts each loop's body once, so its "
                 f"figure is low")
  if r["grad_accum_steps"] > 1:
    lines.append(f"  with grad_accum_steps={r['grad_accum_steps']} the compiler counts the micro-batch scan's "
                 f"body once, not {r['grad_accum_steps']} times: its figure is low")
  lines += ["", "| collective | count | bytes per device | device groups of |", "|---|---|---|---|"]
  for name, e in sorted(r["collectives"].items()):
    groups = ", ".join(map(str, e["group_sizes"])) or "-"
    lines.append(f"| {name} | {e['count']} | {_fmt(e['bytes'])} | {groups} |")
  if not r["collectives"]:
    lines.append("| (none) | 0 | - | - |")
  lines.append("(count: ops in the program text, an op in a loop body once; bytes: their results. Windowed "
               "einsums move FSDP shards with collective-permutes.)" if loops["windowed_einsum"] else
               "(count: ops in the program text, an op in a loop body once; bytes: their results)")
  lines.append("")
  if r["fits"]:
    lines.append(f"fits: peak {_fmt(r['peak'])} of {_fmt(r['hbm'])} per chip ({_fmt(r['headroom'])} headroom)")
  else:
    lines.append(f"does not fit: peak {_fmt(r['peak'])} > {_fmt(r['hbm'])} per chip, {_fmt(-r['headroom'])} over. "
                 f"To fit, try: " + "; or ".join(advice(r)))
  return "\n".join(lines)


def parse_gib(text: str) -> float:
  """'1.5 GiB' / '20.5 MiB' / '3.0 KiB' (as _fmt writes them) -> GiB."""
  value, unit = text.split()
  return float(value) * {"GiB": 1, "MiB": 2 ** -10, "KiB": 2 ** -20}[unit]


def parse_tpu_text(out: str) -> dict:
  """tpu_text read back (for scripts that run the CLI in a subprocess, as experiments/ do): {'temp', 'peak' (None when the
  compiler refused the step: RESOURCE_EXHAUSTED, then 'temp' is what it said it needs), 'fits',
  'compile_s'}, bytes in GiB."""
  refused = re.search(r"temporaries alone need ([\d.]+ [GMK]iB)", out)
  return {"temp": parse_gib(refused.group(1)) if refused else
          parse_gib(re.search(r"\| temp \([^|]*\| ([^|]+) \|", out).group(1)),
          "peak": None if refused else parse_gib(re.search(r"\| peak [^|]*\| ([^|]+) \|", out).group(1)),
          "fits": bool(re.search(r"^fits:", out, re.M)),
          "compile_s": float(re.search(r"compile ([\d.]+) s", out).group(1))}


# ============================================================================ CLI
def _usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _main_tpu(config) -> None:
  import importlib.metadata
  from ijepa_jax.errors import ConfigError
  if _HBM_GIB.value is not None and _HBM_GIB.value <= 0:
    _usage_error(f"--hbm_gib={_HBM_GIB.value} must be positive.")
  hbm = int(_HBM_GIB.value * GIB) if _HBM_GIB.value else None
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
      t = time_estimate(config, _TOPOLOGY.value, _NUM_SLICES.value, _PER_DEVICE_BATCH.value)
    except ConfigError as e:
      _usage_error(str(e))
    print(time_text(t, r["generation"]))


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
        "not what a TPU or GPU needs (for that: --topology=v5p-128 etc.).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _TOPOLOGY.value is not None and flags.FLAGS["devices"].present:
    _usage_error("--topology and --devices are exclusive: --topology compiles for a TPU slice, --devices for "
                 "N fake CPU devices.")
  if _TOPOLOGY.value is None and (flags.FLAGS["num_slices"].present or flags.FLAGS["hbm_gib"].present):
    _usage_error("--num_slices and --hbm_gib go with --topology (e.g. --topology=v5p-128 --num_slices=2).")
  # Compile only: never start a TPU runtime (nor take a TPU a training job is using); the TPU compiler
  # runs from libtpu on its own.
  import jax
  jax.config.update("jax_platforms", "cpu")
  if _TOPOLOGY.value is not None:
    _main_tpu(_CONFIG.value)
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
  _HBM_GIB = flags.DEFINE_float("hbm_gib", None, "With --topology: HBM per chip to judge the fit against "
                                "(default: the chip's).")
  _TIME = flags.DEFINE_bool("time", False, "With --topology: also the TPU cost model's step time, images/s per "
                            "chip and MFU (3 more compiles, unrolled at small depths).")
  _DEVICES = flags.DEFINE_string("devices", "8,16,32,64", "Comma-separated fake CPU device counts (XLA:CPU mode).")
  _PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", None,
                                           "Images per data-parallel device (default: the config's batch).")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=flags_parser(
      "python -m ijepa_jax.memory --config=configs/NAME.py (--topology=v5p-128 [--num_slices=2] "
      "[--hbm_gib=X] [--time] | --devices=8,16,32,64) [--per_device_batch=32]"))
