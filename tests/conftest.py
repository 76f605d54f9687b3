"""Shared test set-up: a tiny version of the demo config, and absl flags marked parsed for grain."""
import os

import pytest
from absl import flags

import ijepa_jax  # noqa: F401  before any test imports jax: on a machine without a TPU it asks for the CPU

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="session")
def _absl_flags():
  # grain's multiprocessing reads absl flags; the CLI parses them under absl.app.run.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def tiny_config(**overrides):
  """The Fashion-MNIST demo config shrunk to seconds: 16 images of 16x16, 4x4 patches, depth 1."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("fashion_mnist", os.path.join(REPO, "configs", "fashion_mnist.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
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
  c.probe.monitor_every = 0   # tests of the monitor turn it on
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return c
