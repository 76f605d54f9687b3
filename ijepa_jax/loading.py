"""Reading a run back, for notebooks, evaluation and feature extraction: its config, one encoder, or the
whole train state, from a local or gs:// workdir whose checkpoints any mesh wrote.

  config, encoder, params, step = loading.load_encoder(WORKDIR)     # the target encoder (default)
  features = encoder.apply({'params': params}, images)

`load_encoder` reads only the arrays of the encoder asked for (an Orbax partial restore): one encoder's
memory. `load` reads the whole train state (context and target encoder, predictor and both Adam moments,
~5 encoders' worth), which only resuming or rewriting a checkpoint needs.
"""
from __future__ import annotations

import json

import jax
import ml_collections

from ijepa_jax import checkpoint, optim, sharding, storage
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
  return ml_collections.ConfigDict(json.loads(config_file.read_text()))


def _prepare(workdir: str, step: int | None, devices):
  """(config with a data-parallel mesh over `devices`, that mesh, the step, its checkpoint directory)."""
  config = read_config(workdir)
  devices = jax.devices()[:1] if devices is None else devices
  # The mesh that wrote the checkpoint does not matter: Orbax reshards onto this one.
  config.mesh = ml_collections.ConfigDict(dict(data=len(devices), fsdp=1))
  mesh = sharding.make_mesh(config.mesh, devices)
  manager = checkpoint.make_manager(workdir, config.keep_checkpoints, config.checkpoint_every)
  step = manager.latest_step() if step is None else step
  manager.close()
  if step is None:
    raise ConfigError(f"no checkpoint in {checkpoint.checkpoint_dir(workdir)}")
  return config, mesh, step, storage.join(checkpoint.checkpoint_dir(workdir), str(step))


def load_encoder(workdir: str, step: int | None = None, encoder: str = "target", devices=None):
  """(config, encoder module, its params, step) from a workdir's checkpoint (default: the latest step),
  restored onto `devices` (default: one device). encoder: 'target' (the EMA encoder the paper evaluates)
  or 'context'. Only that encoder's arrays are read."""
  if encoder not in ENCODERS:
    raise ConfigError(f"encoder={encoder!r}: use 'target' or 'context'.")
  config, mesh, step, path = _prepare(workdir, step, devices)
  module, _ = state_lib.models(config)
  abstract = state_lib.abstract_encoder(config, module, mesh)
  params = checkpoint.restore_state(path, abstract, part=ENCODERS[encoder])
  return config, module, params, step


def load(workdir: str, step: int | None = None, devices=None):
  """(config, encoder, state): the whole TrainState from a workdir's checkpoint, restored onto `devices`
  (default: one device). For features, `load_encoder` needs a fifth of the memory."""
  config, mesh, _, path = _prepare(workdir, step, devices)
  encoder, predictor = state_lib.models(config)
  sampler = make_sampler(config.mask, config.data.image_size // config.model.patch_size)
  # Schedule lengths only shape the optimizer's functions, not its state: any positive values do.
  init_state = state_lib.make_init(config, encoder, predictor, optim.make_optimizer(config.optim, 1, 0), sampler)
  abstract_state, _ = state_lib.abstract(jax.eval_shape(init_state, jax.random.key(config.seed)), mesh,
                                         sharding.rules(config))
  # Only the train state: the data iterator position belongs to the processes that wrote it.
  return config, encoder, checkpoint.restore_state(path, abstract_state)
