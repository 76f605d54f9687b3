"""The train step compiled ahead of time, for devices that need not exist.

`lower_step` lowers the step `main` runs (train.build, the config's mesh and axis rules) for abstract inputs,
so nothing is allocated; `compile_step` compiles it for whatever devices the mesh is built over: fake CPU
devices, a Cloud TPU slice's (`tpu_devices`, from libtpu), an NVIDIA GPU topology's
(ijepa_jax.gpu_targets.gpu_devices), and counts the train state's bytes per device from its shardings.
The reports over these compiles are in ijepa_jax.memory; the TPU cost model's time in ijepa_jax.cost_model.
"""
from __future__ import annotations

import math
import os
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


def lower_step(config, devices, per_device_batch: int | None = None) -> dict:
  """The train step of train.build for this config on a mesh over `devices`, lowered for abstract
  inputs (nothing allocated): {'lowered', 'lower_s', 'abstract_state', 'abstract_batch', 'config', 'sampler',
  'mesh'}. Two configs whose lowered texts are equal compile to the same program."""
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
              abstract_batch=batch, config=config, sampler=sampler, mesh=mesh)


def compile_step(config, devices, per_device_batch: int | None = None) -> dict:
  """lower_step's program compiled: {'report', 'compiled' (None when the compiler refused it for want of
  memory: RESOURCE_EXHAUSTED), 'out_of_memory' (that message), 'config', 'sampler', 'mesh'}. The report has
  the bytes per device of the train state's parts as their shardings split them ('params', 'opt_state',
  'target', 'state'), of the input batch ('batch_bytes'), 'state_total', 'state_ratio' (state per device
  over an even 1/N share), 'batch' (global), 'mesh', 'lower_s' and 'compile_s'."""
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
  out["batch_bytes"] = _bytes_per_device(low["abstract_batch"])
  out.update(batch=config.batch_size, mesh=dict(mesh.shape), lower_s=low["lower_s"], compile_s=compile_s)
  return dict(report=out, compiled=compiled, out_of_memory=out_of_memory, config=config,
              sampler=low["sampler"], mesh=mesh)


# ============================================================================ Cloud TPU slices (libtpu)
def _quiet_libtpu(accelerator_type: str) -> None:
  """Before libtpu starts: compile-only needs no TPU, so give it the values it would otherwise look
  up (and warn about: TPU_ACCELERATOR_TYPE, TPU_WORKER_HOSTNAMES), and let it start while another
  process holds /tmp/libtpu_lockfile."""
  os.environ["TPU_ACCELERATOR_TYPE"] = accelerator_type
  os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
  os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"


def tpu_devices(slice_, num_slices: int = 1) -> list:
  """Compile-only TPU devices of `num_slices` copies of the slice (a tpu_topologies.Slice; each device
  has a `slice_index`)."""
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    from ijepa_jax.errors import ConfigError
    raise ConfigError("--topology needs libtpu, the TPU compiler: pip install -e '.[tpu]' (no TPU needed).")
  _quiet_libtpu(slice_.name)
  from jax.experimental import topologies
  return list(topologies.get_topology_desc(**slice_.topology_kwargs(num_slices)).devices)
