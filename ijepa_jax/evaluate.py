"""Evaluate a checkpoint's frozen target encoder next to its floors:

  python -m ijepa_jax.evaluate --checkpoint=WORKDIR [--config=configs/NAME.py] \
      [--eval=linear,lowshot,knn,attentive] [--step=N] [--out=DIR] [--config.probe.max_train=N ...]

Feature sets, all through the same probes: the target encoder (average-pooled patch tokens of the last
layer, and of the last 4 layers concatenated), the same encoder at its random initialisation, and raw
pixels. Features of whole splits are extracted first, over every process and device, into float16 shards
under OUT/eval_cache/<step>/ (a progress line on stderr; killed, the same command finishes only the missing
shards). Probes: `linear` (small splits: logistic regression, penalty chosen on held-out train, refit; larger
than probe.in_memory_gib: the paper's LARS protocol on minibatches streamed from the shards), `lowshot` (1% of
the labels: probe.lowshot_list's files, e.g. SimCLR's 1percent.txt, else 3 class-balanced draws), `knn`
(cosine, k=20, T=0.07; over a bank split between processes when large) and `attentive` (small splits only).

The dataset is the checkpoint's pretraining data unless --config is given: then its data.source, path,
tfds_name, tfds_data_dir, split and eval_split (and probe.*) are used, so an encoder is probed on any
labelled dataset; images are resized to the encoder's own size and normalised as in its pretraining.
Several processes: as for training (--coordinator_address, --num_processes, --process_id, or --distributed),
with an --out (or workdir) every process can read.
Writes OUT/eval.json and OUT/eval.md (OUT: --out, else the checkpoint's workdir) and prints the table.
The demo (configs/fashion_mnist.py) runs this after pretraining.
"""
from __future__ import annotations

import sys

import jax

from ijepa_jax.errors import ConfigError
from ijepa_jax.evaluation.probes import EVALS, check_evals, run


# ------------------------------------------------------------------------------------------------ CLI
DATASET_KEYS = ("source", "path", "tfds_name", "tfds_data_dir", "split", "eval_split")  # the evaluation's own


def evaluation_config(config, override):
  """The checkpoint's config with the evaluation's dataset (DATASET_KEYS) and probe settings from `override` (a
  config file's). The image size, channels and normalisation stay the encoder's: images are resized to them."""
  if override is None:
    return config
  config.probe = override.probe
  for key in DATASET_KEYS:
    config.data[key] = override.data.get(key, config.data.get(key, ""))
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  from absl import logging
  from ijepa_jax import loading, sharding, state
  logging.set_verbosity(logging.WARNING)  # no INFO lines from Orbax's restore
  evals = None if _EVAL.value is None else [e for e in _EVAL.value.split(",") if e]  # None: probe.evals
  try:
    if evals is not None:
      check_evals(evals)
    config, encoder, target, step = loading.load_encoder(_CHECKPOINT.value, _STEP.value, devices=jax.devices())
    config = evaluation_config(config, _CONFIG.value)
    mesh = sharding.make_mesh(config.mesh, jax.devices())
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
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Optional config file: its probe.* and dataset "
                                            "(data.source, path, splits) replace the checkpoint's "
                                            "(e.g. --config.probe.max_train=...).")
  _DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Several processes with auto-detected peers (TPU pods, SLURM).")
  _COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (several processes).")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
  _PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
  _EVAL = flags.DEFINE_string("eval", None, f"Comma-separated evaluations from {','.join(EVALS)} (default: the "
                              "config's probe.evals, which leaves out the slow attentive probe).")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  _OUT = flags.DEFINE_string("out", None, "Directory (local or gs://) for eval.json, eval.md and the feature "
                             "cache (default: the checkpoint's workdir, whose eval.json is then replaced).")
  flags.mark_flags_as_required(["checkpoint"])
  app.run(main, flags_parser=flags_parser(
      "python -m ijepa_jax.evaluate --checkpoint=WORKDIR [--config=configs/NAME.py] "
      "[--eval=linear,lowshot,knn,attentive]"))
