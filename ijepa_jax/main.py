"""Command line: python -m ijepa_jax.main --config=configs/NAME.py --workdir=DIR [--config.key=value ...]"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Multi-process run with auto-detected peers (Cloud TPU VM pod slices, SLURM).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs without auto-detection.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax
  if _CONFIG.value.cpu_devices > 0:  # before anything starts a backend
    jax.config.update("jax_num_cpu_devices", int(_CONFIG.value.cpu_devices))
  # Here, not at import: grain's worker processes re-import __main__.
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()  # the cluster environment names the coordinator and this process
  from ijepa_jax import checkpoint, train
  from ijepa_jax.errors import ConfigError
  logging.set_verbosity(logging.WARNING)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    _fail(e, 2)
  except (FloatingPointError, checkpoint.WriteError) as e:  # the checkpoints hold the last good state
    _fail(e, 1)


def _fail(error: Exception, code: int):
  """The error on a line of its own, written at once: Orbax's and tensorstore's threads may still be printing
  tracebacks of a failed save to the same stream, a piece at a time."""
  sys.stdout.flush()
  sys.stderr.write(f"\nerror: {error}\n")
  sys.stderr.flush()
  sys.exit(code)


if __name__ == "__main__":
  from ijepa_jax.errors import flags_parser
  app.run(main, flags_parser=flags_parser(
      "python -m ijepa_jax.main --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...] "
      "(keys: ijepa_jax/defaults.py)"))
