"""NVIDIA GPUs as compile-only targets, on a machine without one: devices for aot.compile_step.

jax (0.9 and later) compiles for a CUDA topology with no GPU and no driver when the CUDA plugin is installed
(jax-cuda12-plugin and jax-cuda12-pjrt at jax's version: the gpu_compile extra) and it is given the GPU's
description, an XLA GpuTargetConfigProto in text format. jaxlib 0.10.2 embeds none, so the package ships
XLA's own for the H100 SXM, the H200 and the A100-SXM4-80GB (ijepa_jax/gpu_specs/, Apache-2.0, trimmed to
the fields this jaxlib's proto has); any other spec file can be named by its path. XLA's GPU compiler really
generates code, so it also needs ptxas and libdevice from a CUDA toolkit (a system one, or NVIDIA's nvcc
wheel). It cannot autotune without a GPU: kernels get default configurations, and their scratch memory
(part of temp) may differ from a compile on a real GPU.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import shutil

from ijepa_jax.errors import ConfigError

# --gpu NAME -> XLA's spec file for it (openxla/xla xla/backends/gpu/target_config/specs/)
SPECS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb", "a100": "a100_sxm_80.txtpb"}
INSTALL = "pip install -e '.[gpu_compile]'"


def spec_text(gpu: str) -> str:
  """The GpuTargetConfigProto text for `gpu`: one of SPECS' names, or the path of a .txtpb file."""
  if gpu in SPECS:
    path = importlib.resources.files("ijepa_jax") / "gpu_specs" / SPECS[gpu]
    if not path.is_file():
      raise ConfigError(f"--gpu={gpu}: its spec file ijepa_jax/gpu_specs/{SPECS[gpu]} is not installed with the "
                        f"package; reinstall it ({INSTALL}).")
    return path.read_text()
  if gpu.endswith(".txtpb"):
    if not os.path.isfile(gpu):
      raise ConfigError(f"--gpu={gpu}: no such spec file (an XLA GpuTargetConfigProto in text format, as in "
                        f"openxla/xla xla/backends/gpu/target_config/specs/).")
    return open(gpu).read()
  raise ConfigError(f"--gpu={gpu!r} is not a known GPU: use one of {', '.join(SPECS)} or the path of an XLA GPU "
                    f"spec file (NAME.txtpb).")


def hbm_bytes(spec: str) -> int | None:
  """The GPU's memory from its spec (device_memory_size), None where the spec does not say."""
  m = re.search(r"^\s*device_memory_size:\s*(\d+)", spec, re.M)
  return int(m.group(1)) if m else None


def gpu_name(spec: str) -> str:
  m = re.search(r'^device_description_str:\s*"([^"]*)"', spec, re.M)
  return m.group(1) if m else "GPU"


def topology(count: int) -> str:
  """jax's CUDA topology string 'slices x hosts x GPUs per host': one host up to 8 GPUs, hosts of 8 above."""
  if count < 1 or (count > 8 and count % 8):
    raise ConfigError(f"--gpus={count}: give 1 to 8 GPUs (one host) or a multiple of 8 (hosts of 8 GPUs).")
  return f"1x1x{count}" if count <= 8 else f"1x{count // 8}x8"


def _ptxas_candidates() -> list[str]:
  """Where XLA's GPU compiler looks for ptxas: PATH, --xla_gpu_cuda_data_dir, the usual CUDA roots and the
  nvidia-cuda-nvcc wheel."""
  found = [shutil.which("ptxas") or ""]
  m = re.search(r"--xla_gpu_cuda_data_dir=(\S+)", os.environ.get("XLA_FLAGS", ""))
  roots = ([m.group(1)] if m else []) + [os.environ.get("CUDA_DIR", ""), "/usr/local/cuda", "/opt/cuda"]
  spec = importlib.util.find_spec("nvidia")
  roots += [os.path.join(p, "cuda_nvcc") for p in (spec.submodule_search_locations or [])] if spec else []
  return found + [os.path.join(r, "bin", "ptxas") for r in roots if r]


_NO_PTXAS = ("XLA's GPU compiler needs ptxas and libdevice from a CUDA 12 or later toolkit and found none (PATH, "
             "/usr/local/cuda, /opt/cuda, the nvidia-cuda-nvcc wheel): install the toolkit, or "
             "pip install 'jax-cuda12-plugin[with-cuda]==0.10.2' (NVIDIA's wheels, nvcc among them; ~4 GB).")


def check_toolchain() -> None:
  """ConfigError naming the fix when the CUDA plugin or ptxas is missing."""
  if importlib.util.find_spec("jax_plugins") is None or not any(
      importlib.util.find_spec(f"jax_plugins.{name}") for name in ("xla_cuda12", "xla_cuda13")):
    raise ConfigError(f"--gpu needs jax's CUDA plugin, XLA's GPU compiler: {INSTALL} (jax-cuda12-plugin and "
                      f"jax-cuda12-pjrt at jax's version; no GPU needed).")
  if not any(p and os.path.isfile(p) for p in _ptxas_candidates()):
    raise ConfigError(_NO_PTXAS)


def gpu_devices(gpu: str, count: int = 8) -> list:
  """Compile-only devices of `count` GPUs of kind `gpu` (SPECS' names or a spec file's path), with process
  JAX_PLATFORMS=cpu: jax starts no GPU runtime, the CUDA plugin only compiles."""
  spec = spec_text(gpu)
  topo = topology(count)
  check_toolchain()
  import jax
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(platform="cuda", target_config=spec, topology=topo).devices)
  except (RuntimeError, ValueError) as e:   # JaxRuntimeError is a RuntimeError
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"--gpu={gpu}: jax could not make a compile-only CUDA topology ({first}); it needs "
                      f"jax-cuda12-plugin and jax-cuda12-pjrt at jax's version {jax.__version__} ({INSTALL}) and "
                      f"a spec its GpuTargetConfigProto accepts.") from None


def toolchain_error(message: str) -> str | None:
  """The fix for a GPU compile that failed for want of ptxas or libdevice, else None."""
  if "No PTX compilation provider" in message or "libdevice not found" in message or "ptxas" in message:
    return _NO_PTXAS
  return None
