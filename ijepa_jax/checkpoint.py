"""Orbax checkpoints of the train state together with the data iterator's position.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the TrainState pytree (sharded arrays,
restorable onto any mesh, including a single device); `data` holds one small JSON file per process
with that process's grain iterator state, so a resumed run continues with exactly the next batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class DataStateHandler(ocp.CheckpointHandler):
  """Writes each process's iterator state (a JSON-able dict, snapshotted at save time)."""

  def _file(self, directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  def save(self, directory: epath.Path, args: "DataStateSave"):
    self._file(directory).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    path = self._file(directory)
    if not path.exists():
      # An empty data state (an imported checkpoint, ijepa_jax.convert) fits any number of processes.
      written = list(directory.glob("process_*.json"))
      if written and all(json.loads(p.read_text()) == {} for p in written):
        return {}
      raise FileNotFoundError(
          f"{path} is missing: this checkpoint was written by a run with a different number of processes.")
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path):
    return None

  def structure(self, directory: epath.Path):
    return None

  def finalize(self, directory: epath.Path):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, keep: int, every: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      save_interval_steps=max(1, every),
      enable_async_checkpointing=async_save,
      create=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict, force: bool = False) -> bool:
  return manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=DataStateSave(dict(data_state))),
      force=force,
  )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """abstract_state: a pytree of jax.ShapeDtypeStruct with the target shardings (any mesh)."""
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=DataStateRestore()))
  return restored["state"], restored["data"]


def restore_state(path: str, abstract_state):
  """Restores only the train state from WORKDIR/checkpoints/<step> (for notebooks and evaluation)."""
  with ocp.CheckpointManager(os.path.dirname(os.path.abspath(path)), item_names=("state", "data")) as mgr:
    step = int(os.path.basename(os.path.abspath(path)))
    return mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
