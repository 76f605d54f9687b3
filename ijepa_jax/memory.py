"""How much memory a config needs per device, for several device counts, without running anything:

  python -m ijepa_jax.memory --config=configs/vit_h14.py --devices=8,16,32,64 [--per_device_batch=32]
      [--config.dtype=bfloat16 --config.mesh.data=1 --config.mesh.fsdp=-1 ...]

For each N the train step is compiled (XLA's SPMD partitioner, compile only) on a mesh of N fake CPU
devices. Reported per device: the bytes of parameters, optimizer state and EMA target as the config's
axis rules shard them, the compiled program's temp memory (activations, gradients, collectives'
buffers), and `state ratio` = train-state bytes per device / (total train-state bytes / N): 1.0 is
perfect FSDP, replicated small arrays push it above. CPU temp sizes approximate what a TPU or GPU
compile reports; they are an estimate, not a measurement of a real accelerator.
"""
from __future__ import annotations

import math
import sys

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


def report(config, devices, per_device_batch: int | None = None) -> dict:
  """{'params', 'opt_state', 'target', 'state', 'state_total', 'state_ratio', 'temp', 'peak'} bytes per
  device for a mesh over `devices` (a list of jax devices)."""
  import jax
  import ml_collections
  from ijepa_jax import sharding, train
  from ijepa_jax.masks import MultiBlockSampler
  config = ml_collections.ConfigDict(config.to_dict())
  mesh = sharding.make_mesh(config.mesh, devices)
  if per_device_batch:
    config.batch_size = per_device_batch * sharding.data_parallel_size(mesh)
  train.check_config(config)
  train.check_accumulation(config, sharding.data_parallel_size(mesh))
  d = config.data
  sampler = MultiBlockSampler.from_config(config.mask, d.image_size // config.model.patch_size)
  _, abstract_state, _, step = train.build(config, mesh, sampler, total_steps=1000, warmup_steps=100)
  b, batch_sharding = config.batch_size, sharding.batch_sharding(mesh)
  batch = {
      "images": jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels), np.uint8, sharding=batch_sharding),
      "skipped": jax.ShapeDtypeStruct((b,), np.int32, sharding=batch_sharding),
      "context_idx": jax.ShapeDtypeStruct((b, sampler.num_context), np.int32, sharding=batch_sharding),
      "target_idx": jax.ShapeDtypeStruct((b, sampler.num_targets, sampler.num_target), np.int32,
                                         sharding=batch_sharding),
  }
  import flax.linen as nn
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    compiled = step.lower(abstract_state, batch).compile()
  stats = compiled.memory_analysis()
  parts = {"params": abstract_state.params, "opt_state": abstract_state.opt_state, "target": abstract_state.target}
  out = {k: _bytes_per_device(v) for k, v in parts.items()}
  out["state"] = sum(out.values())
  out["state_total"] = sum(_bytes_total(v) for v in parts.values())
  out["state_ratio"] = out["state"] / (out["state_total"] / len(devices))
  out["temp"] = int(getattr(stats, "temp_size_in_bytes", 0))
  out["peak"] = out["state"] + out["temp"]
  out["batch"] = b
  out["mesh"] = dict(mesh.shape)
  return out


def _fmt(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2 ** 20:.1f} MiB"


def table(rows: dict[int, dict]) -> str:
  lines = ["| devices | mesh | global batch | params | opt state | EMA target | temp | state + temp | state ratio |",
           "|---|---|---|---|---|---|---|---|---|"]
  for n, r in rows.items():
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
    lines.append(f"| {n} | {mesh} | {r['batch']} | {_fmt(r['params'])} | {_fmt(r['opt_state'])} | "
                 f"{_fmt(r['target'])} | {_fmt(r['temp'])} | {_fmt(r['peak'])} | {r['state_ratio']:.3f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ijepa_jax.errors import ConfigError
  try:
    counts = [int(x) for x in _DEVICES.value.split(",") if x]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    print(f"error: --devices={_DEVICES.value!r}: give device counts such as 8,16,32,64", file=sys.stderr)
    sys.exit(2)
  import jax
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", max(counts))
  config = _CONFIG.value
  rows = {}
  try:
    for n in counts:
      rows[n] = report(config, jax.devices()[:n], _PER_DEVICE_BATCH.value)
      r = rows[n]
      print(f"N={n}: state {_fmt(r['state'])}/device (ratio {r['state_ratio']:.3f}), temp {_fmt(r['temp'])}, "
            f"compiled", flush=True)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  c = config
  width = f" ({c.model.width} wide)" if c.model.width > 0 else ""
  print(f"\n{c.model.name}{width}, {c.data.image_size} px, patch {c.model.patch_size}, "
        f"dtype {c.dtype}, remat {c.model.remat}; train state {_fmt(rows[counts[0]]['state_total'])} in all\n")
  print(table(rows))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  from ijepa_jax.errors import flags_parser
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
  _DEVICES = flags.DEFINE_string("devices", "8,16,32,64", "Comma-separated device counts.")
  _PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", None,
                                           "Images per data-parallel device (default: the config's batch).")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=flags_parser(
      "python -m ijepa_jax.memory --config=configs/NAME.py --devices=8,16,32,64 [--per_device_batch=32]"))
