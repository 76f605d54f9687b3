"""What the direct LayerNorm variance (torch's mean((x - mean)^2), ours since issue 16) costs against
flax's fast form (E[x^2] - E[x]^2): the same train step compiled both ways, timed interleaved.

  python experiments/layer_norm_cost.py [--config=configs/fashion_mnist.py] [--reps=15] \
      [--out=experiments/results/layer_norm_cost.md]

Both executables are compiled up front from one config, one initial state and one batch, then called
alternately (A B A B ...), so a change in the machine's speed during the run hits both alike; the
result is the ratio of their median step times. Appends a Markdown section to --out.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "fashion_mnist.py"), "Config.")
_REPS = flags.DEFINE_integer("reps", 15, "Timed calls of each executable.")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "results", "layer_norm_cost.md"), "Results file.")


@contextlib.contextmanager
def variance_form(fast: bool):
  """Builds the models' LayerNorms with flax's fast variance (fast=True) or the direct form."""
  import flax.linen as nn
  from ijepa_jax.models import predictor, vit
  original = vit.layer_norm

  def patched(name):  # vit.layer_norm's module with only the variance form changed
    import jax.numpy as jnp
    return nn.LayerNorm(epsilon=vit.LN_EPS, use_fast_variance=fast, dtype=jnp.float32, param_dtype=jnp.float32,
                        scale_init=vit._ones(("norm",)), bias_init=vit._zeros(("norm",)), name=name)
  vit.layer_norm = predictor.layer_norm = patched
  try:
    yield
  finally:
    vit.layer_norm = predictor.layer_norm = original


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  from ijepa_jax import sharding, train
  from ijepa_jax.masks import MultiBlockSampler
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  sampler = MultiBlockSampler.from_config(config.mask, config.data.image_size // config.model.patch_size)
  rng = np.random.default_rng(0)
  b, s = config.batch_size, config.data.image_size
  batch = {"images": rng.integers(0, 256, (b, s, s, config.data.channels), dtype=np.uint8),
           "skipped": np.zeros(b, np.int32), **sampler(rng, b)}
  compiled, states = {}, {}
  for fast in (False, True):
    with variance_form(fast):
      _, _, init, step = train.build(config, mesh, sampler, total_steps=100, warmup_steps=10)
      with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
        states[fast] = init()
        global_batch = sharding.global_batch(batch, mesh)
        compiled[fast] = step.lower(states[fast], global_batch).compile()
  times = {False: [], True: []}
  for fast in (False, True):  # warm-up
    jax.block_until_ready(compiled[fast](jax.tree.map(lambda x: x.copy(), states[fast]), global_batch))
  for _ in range(_REPS.value):
    for fast in (False, True):
      state = jax.tree.map(lambda x: x.copy(), states[fast])  # the step donates its state
      jax.block_until_ready(state)
      t = time.perf_counter()
      jax.block_until_ready(compiled[fast](state, global_batch))
      times[fast].append(time.perf_counter() - t)
  direct, fast = (float(np.median(times[k])) for k in (False, True))
  lines = [f"## {config.model.name}, {s} px, batch {b}, dtype {config.dtype}: {time.strftime('%Y-%m-%d')}", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
           f"{jax.devices()[0].device_kind}; {_REPS.value} interleaved calls each.", "",
           f"Command: `python experiments/layer_norm_cost.py {' '.join(sys.argv[1:])}`", "",
           "| LayerNorm variance | median step | min | max |", "|---|---|---|---|",
           f"| direct, mean((x - mean)^2) (ours) | {1e3 * direct:.1f} ms | {1e3 * min(times[False]):.1f} ms | "
           f"{1e3 * max(times[False]):.1f} ms |",
           f"| fast, E[x^2] - E[x]^2 (flax's default) | {1e3 * fast:.1f} ms | {1e3 * min(times[True]):.1f} ms | "
           f"{1e3 * max(times[True]):.1f} ms |", "",
           f"direct / fast = {direct / fast:.3f}", ""]
  text = "\n".join(lines) + "\n"
  new = not os.path.exists(_OUT.value)
  with open(_OUT.value, "a") as f:
    if new:
      f.write("# LayerNorm variance: direct vs fast form\n\nWritten by experiments/layer_norm_cost.py (see its "
              "docstring).\n\n")
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
