"""Reading a run back, for notebooks, evaluation and feature extraction: its config, one encoder, or the
whole train state, from a local or gs:// workdir whose checkpoints any mesh wrote.

  config, encoder, params, step = loading.load_encoder(WORKDIR)     # the target encoder (default)
  features = encoder.apply({'params': params}, images)

`load_encoder` reads only the arrays of the encoder asked for (an Orbax partial restore): one encoder's
memory. Reading never writes: nothing in the workdir is created, cleaned up or moved, so a notebook can
read a run while it trains. `load` reads the whole train state (context and target encoder, predictor and both Adam moments,
~5 encoders' worth), which only resuming or rewriting a checkpoint needs.
"""
from __future__ import annotations

import json

import jax
import ml_collections

from ijepa_jax import checkpoint, defaults, optim, sharding, storage
from ijepa_jax import state as state_lib
from ijepa_jax.errors import ConfigError
from ijepa_jax.mask_strategies import make_sampler

# Where each encoder lives in the TrainState: the EMA target encoder, or the trained context encoder.
ENCODERS = {"target": ("target",), "context": ("params", "encoder")}


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json a run (or ijepa_jax.convert) wrote into its workdir."""
  config_file = storage.check_readable(workdir, "workdir") / "config.json"
  if not config_file.exists():
    raise ConfigError(f"{config_file} not found: point at the --workdir of an ijepa_jax run.")
  return defaults.complete(ml_collections.ConfigDict(json.loads(config_file.read_text())))


def _prepare(workdir: str, devices):
  """(config with a data-parallel mesh over `devices`, that mesh)."""
  config = read_config(workdir)
  devices = jax.devices()[:1] if devices is None else devices
  # The mesh that wrote the checkpoint does not matter: Orbax reshards onto this one.
  config.mesh = ml_collections.ConfigDict(dict(data=len(devices), fsdp=1))
  return config, sharding.make_mesh(config.mesh, devices)


def _restore(workdir: str, step: int | None, abstract, part=()):
  """(the state or its part at `step`, step). Only reads: a run may be training in this workdir. With
  step=None the newest finished checkpoint; if that one is pruned by the run while being read, the next
  newest."""
  for _ in range(3):
    steps = checkpoint.finished_steps(checkpoint.checkpoint_dir(workdir))
    at = (steps[-1] if steps else None) if step is None else step
    if at is None:
      raise ConfigError(f"no checkpoint in {checkpoint.checkpoint_dir(workdir)}")
    path = storage.join(checkpoint.checkpoint_dir(workdir), str(at))
    try:
      return checkpoint.restore_state(path, abstract, part=part), at
    except ConfigError:
      if step is not None or storage.path(path).exists():
        raise
  raise ConfigError(f"the checkpoints in {checkpoint.checkpoint_dir(workdir)} were pruned faster than they "
                    f"could be read: pass a step, or read when the run has finished.")


def load_encoder(workdir: str, step: int | None = None, encoder: str = "target", devices=None):
  """(config, encoder module, its params, step) from a workdir's checkpoint (default: the latest step),
  restored onto `devices` (default: one device). encoder: 'target' (the EMA encoder the paper evaluates)
  or 'context'. Only that encoder's arrays are read."""
  if encoder not in ENCODERS:
    raise ConfigError(f"encoder={encoder!r}: use 'target' or 'context'.")
  config, mesh = _prepare(workdir, devices)
  module, _ = state_lib.models(config)
  abstract = state_lib.abstract_encoder(config, module, mesh)
  params, step = _restore(workdir, step, abstract, part=ENCODERS[encoder])
  return config, module, params, step


def load(workdir: str, step: int | None = None, devices=None):
  """(config, encoder, state): the whole TrainState from a workdir's checkpoint, restored onto `devices`
  (default: one device). For features, `load_encoder` needs a fifth of the memory."""
  config, mesh = _prepare(workdir, devices)
  encoder, predictor = state_lib.models(config)
  sampler = make_sampler(config.mask, config.data.image_size // config.model.patch_size)
  # Schedule lengths only shape the optimizer's functions, not its state: any positive values do.
  init_state = state_lib.make_init(config, encoder, predictor, optim.make_optimizer(config.optim), sampler)
  abstract_state, _ = state_lib.abstract(jax.eval_shape(init_state, jax.random.key(config.seed)), mesh,
                                         sharding.rules(config))
  return config, encoder, _restore(workdir, step, abstract_state)[0]
