"""I-JEPA in JAX/Flax."""
import os as _os


def _keep_jax_off_an_absent_tpu() -> None:
  """The tpu and test extras install libtpu (the memory report compiles for TPU slices with it), and
  jax then starts the TPU runtime in every process, TPU or not: on a machine without a TPU chip
  that prints two warnings about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES and holds
  /tmp/libtpu_lockfile, and then it falls back to the CPU. Where that fallback is certain
  (libtpu installed, no TPU chip on the PCI bus, no other jax plugin such as CUDA, JAX_PLATFORMS
  unset) ask for the CPU directly; anywhere else leave jax to choose."""
  import importlib.metadata
  import importlib.util
  if "JAX_PLATFORMS" in _os.environ or importlib.util.find_spec("libtpu") is None:
    return
  if importlib.metadata.entry_points(group="jax_plugins") or importlib.util.find_spec("jax_plugins"):
    return
  try:
    from jax._src import hardware_utils
    if hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0:
      return
  except (ImportError, AttributeError):
    return
  import jax
  _os.environ["JAX_PLATFORMS"] = "cpu"      # for child processes (grain workers, subprocesses)
  jax.config.update("jax_platforms", "cpu")  # this process may have imported jax already


_keep_jax_off_an_absent_tpu()
