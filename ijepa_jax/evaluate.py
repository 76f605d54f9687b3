"""Evaluate a checkpoint's frozen target encoder next to its floors:

  python -m ijepa_jax.evaluate --checkpoint=WORKDIR [--config=configs/NAME.py] \
      [--eval=linear,lowshot,knn,attentive] [--step=N] [--out=DIR] [--config.probe.max_train=N ...]

Feature sets, all through the same probes: the target encoder (average-pooled patch tokens of the last
layer, and of the last 4 layers concatenated), the same encoder at its random initialisation, and raw
pixels. Probes: `linear` (logistic regression on standardised features, penalty chosen on held-out
train, refit), `lowshot` (the same on 1% of the labels, 3 draws), `knn` (cosine, k=20, T=0.07), and
`attentive` (a learned query cross-attending over the last layer's patch tokens, then linear; for the
two encoders, not raw pixels).
Writes WORKDIR/eval.json and WORKDIR/eval.md (or --out's) and prints the table; features are cached in
WORKDIR/eval_cache/<step>/ (or --out's). The demo (configs/fashion_mnist.py) runs this after pretraining.
"""
from __future__ import annotations

import sys

import jax

from ijepa_jax.errors import ConfigError
from ijepa_jax.evaluation.probes import EVALS, check_evals, run


# ------------------------------------------------------------------------------------------------ CLI
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from absl import logging
  from ijepa_jax import loading, sharding, state
  logging.set_verbosity(logging.WARNING)  # no INFO lines from Orbax's restore
  evals = None if _EVAL.value is None else [e for e in _EVAL.value.split(",") if e]  # None: probe.evals
  try:
    if evals is not None:
      check_evals(evals)
    config, encoder, target, step = loading.load_encoder(_CHECKPOINT.value, _STEP.value, devices=jax.local_devices())
    if _CONFIG.value is not None:  # the probe settings (and data paths) of the given config file
      config.probe = _CONFIG.value.probe
      config.data.path, config.data.split, config.data.eval_split = (
          _CONFIG.value.data.path, _CONFIG.value.data.split, _CONFIG.value.data.eval_split)
    mesh = sharding.make_mesh(config.mesh, jax.local_devices())
    initial = state.initial_encoder_params(config, encoder) if config.probe.random_init_baseline else None
    run(config, encoder, target, initial, mesh, _OUT.value or _CHECKPOINT.value, evals, step)
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  from ijepa_jax.errors import flags_parser
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir holding config.json and checkpoints/.")
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Optional config file: its probe.* and data paths "
                                            "replace the checkpoint's (e.g. --config.probe.max_train=...).")
  _EVAL = flags.DEFINE_string("eval", None, f"Comma-separated evaluations from {','.join(EVALS)} (default: the "
                              "config's probe.evals, which leaves out the slow attentive probe).")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  _OUT = flags.DEFINE_string("out", None, "Directory (local or gs://) for eval.json, eval.md and the feature "
                             "cache (default: the checkpoint's workdir, whose eval.json is then replaced).")
  flags.mark_flags_as_required(["checkpoint"])
  app.run(main, flags_parser=flags_parser(
      "python -m ijepa_jax.evaluate --checkpoint=WORKDIR [--config=configs/NAME.py] "
      "[--eval=linear,lowshot,knn,attentive]"))
