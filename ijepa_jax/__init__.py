"""I-JEPA in JAX/Flax."""
import os as _os


def _keep_jax_off_absent_accelerators() -> None:
  """The tpu and test extras install libtpu (the memory report compiles for TPU slices with it), and
  jax then starts the TPU runtime in every process, TPU or not: on a machine without a TPU chip
  that prints two warnings about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES and holds
  /tmp/libtpu_lockfile, and then it falls back to the CPU. The gpu_compile extra installs jax's
  CUDA plugin (the memory report compiles for NVIDIA GPUs with it), whose start-up check then fails in every
  process on a machine without CUDA's libraries and logs a traceback. Where the CPU is certain (libtpu
  and/or the CUDA plugin installed, but no TPU chip on the PCI bus and no NVIDIA GPU, no other jax plugin,
  JAX_PLATFORMS unset) ask for the CPU directly; anywhere else leave jax to choose. The CUDA plugin still
  registers, so compile-only GPU targets work (ijepa_jax.gpu_targets)."""
  import importlib.metadata
  import importlib.util
  if "JAX_PLATFORMS" in _os.environ:
    return
  plugins = {e.value.rsplit(".", 1)[-1] for e in importlib.metadata.entry_points(group="jax_plugins")}
  if importlib.util.find_spec("jax_plugins"):
    import pkgutil

    import jax_plugins
    plugins |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
  cuda = {"xla_cuda12", "xla_cuda13"}
  libtpu = importlib.util.find_spec("libtpu") is not None
  if (not libtpu and not plugins & cuda) or plugins - cuda:
    return
  try:
    from jax._src import hardware_utils
    if hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0 or hardware_utils.has_visible_nvidia_gpu():
      return
  except (ImportError, AttributeError):
    return
  import jax
  _os.environ["JAX_PLATFORMS"] = "cpu"      # for child processes (grain workers, subprocesses)
  jax.config.update("jax_platforms", "cpu")  # this process may have imported jax already


_keep_jax_off_absent_accelerators()
