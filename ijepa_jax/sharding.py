"""The device mesh and the logical-axis rules that place parameters and activations on it.

The models name their dimensions ('embed', 'mlp', 'act_batch', ...); the config's `axis_rules` map
those names to mesh axes. The models never name a mesh axis.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from ijepa_jax.errors import ConfigError
from ijepa_jax.models.layout import STACKED_AXIS

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the leading batch dimension is split over both


def mesh_shape(mesh_cfg, num_devices: int, name: str = "config.mesh", unit: str = "available devices") -> tuple[int, ...]:
  """Axis sizes from the config, with a single -1 filling the remaining devices (or slices)."""
  unknown = set(mesh_cfg.keys()) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"{name} has unknown axes {sorted(unknown)}: the axes are {MESH_AXES}.")
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  flag = "--" + name
  if sizes.count(-1) > 1:
    raise ConfigError(f"{name} {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1.")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ConfigError(
        f"{name} {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} {unit}: "
        f"set e.g. {flag}.data=-1 {flag}.fsdp=1.")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ConfigError(
        f"{name} {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} but {num_devices} {unit} are there: "
        f"make the sizes multiply to {num_devices} or set one of them to -1.")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None, dcn_cfg=None) -> Mesh:
  """The mesh over `devices`. When they span several slices (TPU multislice: devices carry a
  `slice_index`), `mesh_cfg` sizes the mesh within a slice (ICI) and `dcn_cfg` across slices (DCN),
  and mesh_utils.create_hybrid_device_mesh lays the devices out so that only the DCN part of each axis
  crosses slices. Default across slices: data parallel (data=-1), so FSDP traffic stays on ICI."""
  devices = jax.devices() if devices is None else devices
  slices = sorted({getattr(d, "slice_index", 0) for d in devices})
  dcn = mesh_shape(dcn_cfg if dcn_cfg is not None else {"data": -1}, len(slices), "config.mesh_dcn", "slices")
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if len(slices) == 1:
    return jax.make_mesh(mesh_shape(mesh_cfg, len(devices)), MESH_AXES, axis_types=axis_types, devices=devices)
  per_slice = len(devices) // len(slices)
  if any(sum(getattr(d, "slice_index", 0) == s for d in devices) != per_slice for s in slices):
    raise ConfigError(f"the {len(devices)} devices are spread unevenly over {len(slices)} slices: "
                      f"every slice needs the same number of devices.")
  ici = mesh_shape(mesh_cfg, per_slice, "config.mesh", "devices in each slice")
  array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  return Mesh(array, MESH_AXES, axis_types=axis_types)


def rules(config) -> tuple[tuple[str, object], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in config.axis_rules)


def logical_shardings(boxed_tree, mesh: Mesh, axis_rules):
  """NamedShardings for a tree of nn.Partitioned leaves (e.g. from jax.eval_shape(model.init, ...)), each
  fitted to its array's shape (`fit`), so that any slice size can hold any config."""
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, axis_rules)
  return jax.tree.map(lambda leaf, s: fit(s, leaf), boxed_tree, shardings,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def fit(s: NamedSharding, leaf) -> NamedSharding:
  """`s` with every dimension that its mesh axes do not divide unsplit (jit would refuse the array: e.g.
  a 384-wide predictor's vectors, or ViT-g's width 1408, over 256 devices); the axes so freed move to the
  largest other dimension they divide (ViT-g's MLP kernels then split along 6144), else that array is
  replicated along them. Shardings that fit are returned as they are."""
  value, names = (leaf.value, leaf.names) if isinstance(leaf, nn.Partitioned) else (leaf, ())
  shape = tuple(getattr(value, "shape", ()))
  spec = list(s.spec) + [None] * (len(shape) - len(s.spec))
  names = tuple(names) + (None,) * (len(shape) - len(names))
  ways = lambda axes: math.prod(s.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
  freed = [axes for i, axes in enumerate(spec) if axes is not None and shape[i] % ways(axes)]
  if not freed:
    return s
  spec = [None if axes is not None and shape[i] % ways(axes) else axes for i, axes in enumerate(spec)]
  for axes in freed:
    free = [i for i in range(len(shape))
            if spec[i] is None and names[i] != STACKED_AXIS and shape[i] % ways(axes) == 0]
    if free:
      spec[max(free, key=lambda i: shape[i])] = axes
  return NamedSharding(s.mesh, P(*spec), memory_kind=s.memory_kind)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def process_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
  """The global batch rows this process's devices hold, in the order `global_batch` expects its local
  batch (jax.make_array_from_process_local_data: the process's slices, ascending)."""
  slices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
  starts = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else batch_size) for s in slices})
  return np.concatenate([np.arange(a, b) for a, b in starts])


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles per-process numpy batches into global arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
