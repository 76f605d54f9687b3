"""Shared test set-up: a tiny version of the demo config, and absl flags marked parsed for grain."""
import atexit
import os
import shutil
import tempfile

import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent compilation cache for the session, in this process and every subprocess (they inherit the
# environment; runs get it as config.compilation_cache): the same tiny programs, compiled by dozens of tests
# in fresh processes, are compiled once. IJEPA_TEST_COMPILATION_CACHE=DIR keeps one across sessions.
COMPILATION_CACHE = os.environ.get("IJEPA_TEST_COMPILATION_CACHE") or tempfile.mkdtemp(prefix="ijepa_jax_cache_")
if "IJEPA_TEST_COMPILATION_CACHE" not in os.environ:
  os.environ["IJEPA_TEST_COMPILATION_CACHE"] = COMPILATION_CACHE
  atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = COMPILATION_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# XLA:CPU's LLVM backend at optimisation level 0: the suite is mostly compiling tiny programs, and this halves
# a tiny run's compile (8 -> 3 s, the same losses); the tests compare runs with each other, not speeds.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import ijepa_jax  # noqa: E402,F401  before any test imports jax: on a machine without a TPU it asks for the CPU


@pytest.fixture(autouse=True, scope="session")
def _absl_flags():
  # grain's multiprocessing reads absl flags; the CLI parses them under absl.app.run.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def load_file(path: str, name: str | None = None):
  """The module in the file at `path` (relative to the repository), e.g. an experiments/ script."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(name or os.path.splitext(os.path.basename(path))[0],
                                                os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(**overrides):
  """The Fashion-MNIST demo config shrunk to seconds: 16 images of 16x16, 4x4 patches, depth 1."""
  c = load_file("configs/fashion_mnist.py").get_config()
  c.batch_size = 16
  c.total_steps = 12
  c.warmup_steps = 3
  c.data.image_size = 16
  c.model.patch_size = 2       # an 8x8 grid
  c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 1, 2, 64
  c.model.predictor_width, c.model.predictor_depth, c.model.predictor_heads = 16, 1, 2
  c.mask.reference_batch = 16
  c.optim.lr, c.optim.start_lr, c.optim.ema = 1e-3, 2e-4, (0.996, 1.0)  # the release's; fast on tiny models
  c.log_every = 1
  c.checkpoint_every = 4
  c.probe.enabled = False
  c.probe.max_test = 2000     # of the 10,000 test images, when a test turns the probes on
  c.probe.monitor_every = 0   # tests of the monitor turn it on
  c.compilation_cache = COMPILATION_CACHE
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return c


# The same tiny run as `--config.KEY=VALUE` overrides of configs/fashion_mnist.py, for the experiment scripts'
# end-to-end tests (each adds which probes run), with probes cut to seconds.
TINY_CLI = ["batch_size=16", "warmup_steps=1", "data.image_size=16", "model.patch_size=2", "model.width=32",
            "model.depth=1", "model.num_heads=2", "model.mlp_dim=64", "model.predictor_width=16",
            "model.predictor_depth=1", "model.predictor_heads=2", "mask.reference_batch=16", "log_every=1",
            "checkpoint_every=2", "cpu_devices=1", "write_plots=False", "probe.max_train=300",
            "probe.max_test=2000",
            "probe.weight_decays=(0.01,)", "probe.lowshot_seeds=(0,)", f"compilation_cache={COMPILATION_CACHE}"]


# --------------------------------------------------------------------------------- Cloud Storage, on loopback
GCS_BUCKET = "ijepa-test"


@pytest.fixture(scope="session")
def gcs():
  """A Cloud Storage emulator (tests/gcs_emulator.py: gcp-storage-emulator's JSON API) on 127.0.0.1 for the whole session, with
  bucket GCS_BUCKET, and both storage clients pointed at it by their documented settings:
  STORAGE_EMULATOR_HOST (gcsfs, behind etils.epath), TENSORSTORE_GCS_HTTP_URL (tensorstore, behind
  Orbax) and CLOUD_STORAGE_EMULATOR_ENDPOINT (google-cloud-cpp, behind array_record). Subprocesses inherit them. Yields a function: gcs("name") -> a fresh gs:// prefix."""
  import socket
  import subprocess
  import sys
  import time
  import uuid
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), f"--port={port}",
                           f"--bucket={GCS_BUCKET}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), 0.5).close()
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        pytest.fail("the Cloud Storage emulator did not start (pip install -e '.[test]')")
      time.sleep(0.1)
  url = f"http://127.0.0.1:{port}"
  settings = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
              "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,   # google-cloud-cpp, behind array_record's gs:// reads
              # gcsfs's bucket-type probe uses a gRPC control API that the emulator does not serve
              "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  before = {k: os.environ.get(k) for k in settings}
  os.environ.update(settings)
  try:
    yield lambda name: f"gs://{GCS_BUCKET}/{name}-{uuid.uuid4().hex[:8]}"
  finally:
    for k, v in before.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)
