"""Orbax checkpoints of the train state together with the data position.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the TrainState pytree (sharded arrays,
restorable onto any mesh and any number of processes, including a single device); `data` is one small
JSON file: the data position (the data order is a function of the global step, so a resumed run on any
number of processes continues with exactly the next global batch; the file records what that order
depends on) and a manifest of the state: each array's shape, dtype and fingerprint.

The manifest is what makes restoring safe. Before reading any array, the shapes are compared with the
config's, so a checkpoint of another model is a clear error that lists the differing parameters (and is
left alone). After reading, every array's fingerprint is recomputed: a truncated or corrupted checkpoint
is never restored silently; `restore_latest` moves it aside (WORKDIR/damaged_checkpoints/) and falls back
to the previous one.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
# The default jax.Array handler's metadata store and the registry, by their orbax-checkpoint 0.12 module paths.
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from ijepa_jax import storage
from ijepa_jax.errors import ConfigError


DATA_FILE = "data.json"

# Replica-parallel saving (each data-parallel replica writes a slice of a replicated array) only for arrays of
# at least 1 MiB per replica: below that the slicing costs more than it saves (one compiled slice per array
# shape at the first save: ~0.8 s of a tiny run's checkpoint, where the whole state is a few MB). Orbax reads
# this from its global registry only (public: register_type_handler, which logs a warning at every start).
type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, ocp.type_handlers.ArrayHandler(
    min_slice_bytes_for_replica_parallel=2 ** 20, array_metadata_store=array_metadata_store.Store()),
    override=True, ignore_warnings=True)


def read_data(directory: epath.Path) -> dict:
  """The `data` item of a checkpoint: {'position': ..., 'state': manifest}. Checkpoints written before the
  data position was global hold one process_<i>-of-<n>.json per process ({'iterator': ..., 'state': ...});
  any of them serves (the manifest is the same in each)."""
  path = directory / DATA_FILE
  if path.exists():
    return json.loads(path.read_text())
  legacy = sorted(directory.glob("process_*.json"))
  if not legacy:
    raise FileNotFoundError(f"{path} is missing")
  return json.loads(legacy[0].read_text())


class DataStateHandler(ocp.CheckpointHandler):
  """Writes the data position and the state's manifest: one JSON file, the same for every process, written
  by process 0, so the checkpoint restores on any number of processes. (Not grain's checkpoint handler: it
  saves each process's iterator state, which only restores onto the same number of processes.)"""

  def save(self, directory: epath.Path, args: "DataStateSave"):
    if jax.process_index() == 0:
      (directory / DATA_FILE).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    return read_data(directory)

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
  """WORKDIR/checkpoints (WORKDIR local or gs://: Orbax writes either through etils.epath and tensorstore)."""
  return storage.join(workdir, "checkpoints")


def make_manager(workdir: str, keep: int, every: int, async_save: bool = True) -> ocp.CheckpointManager:
  """The training run's manager: it creates the folder, saves, prunes to `keep` and cleans up what a killed
  save left. Only the run that writes a workdir may hold one; readers restore by path (`restore_state`)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      save_interval_steps=max(1, every),
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,  # what a killed or failed save left half-written
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data"))


def finished_steps(directory) -> list[int]:
  """The steps of the finished (finalized) checkpoints in WORKDIR/checkpoints, oldest first, by listing the
  folder alone: no manager, nothing written. A step that a live run prunes during the listing is left out."""
  steps = []
  for p in storage.path(directory).iterdir() if storage.path(directory).exists() else ():
    try:
      if p.name.isdigit() and ocp.step.is_checkpoint_finalized(p):
        steps.append(int(p.name))
    except OSError:   # removed meanwhile
      pass
  return sorted(steps)


# ------------------------------------------------------------------------------------------ manifest
@jax.jit
def _fingerprints(tree):
  """Per array: the sum of its elements' bit patterns modulo 2**32. Integer sums do not depend on the
  order of addition, so the value is exact on any mesh; any single changed element changes it."""
  def one(x):
    x = jnp.asarray(x)
    if x.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
      bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.sum(bits, dtype=jnp.uint32)
  return jax.tree.map(one, tree)


def manifest(state) -> dict[str, dict]:
  """{'params/encoder/...': {'shape', 'dtype', 'fingerprint'}} for every array of the state."""
  prints = jax.tree.leaves(_fingerprints(state))
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {_name(path): {"shape": list(x.shape), "dtype": str(x.dtype), "fingerprint": int(np.asarray(f))}
          for (path, x), f in zip(leaves, prints)}


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def mismatches(saved: dict[str, dict], abstract_state) -> list[str]:
  """Lines naming every array whose shape or dtype differs between a manifest and the config's state."""
  wanted = {_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  lines = []
  for name in sorted(set(saved) | set(wanted)):
    if name not in wanted:
      lines.append(f"  {name}: in the checkpoint, not in this config")
    elif name not in saved:
      lines.append(f"  {name}: in this config, not in the checkpoint")
    else:
      s, w = saved[name], wanted[name]
      if tuple(s["shape"]) != tuple(w.shape) or s["dtype"] != str(w.dtype):
        lines.append(f"  {name}: checkpoint {s['dtype']}{s['shape']}, config {w.dtype}{list(w.shape)}")
  return lines


# ------------------------------------------------------------------------------------------ save / restore
class WriteError(Exception):
  """A checkpoint could not be written (disk full, permissions); the message names the intact one."""


def _write_failed(manager, e: Exception) -> WriteError:
  # Finalized ones only: on Cloud Storage a half-written step's folder exists under its final name.
  complete = finished_steps(manager.directory)
  intact = f"the newest complete checkpoint is step {complete[-1]}" if complete else "no checkpoint was completed"
  return WriteError(f"could not write a checkpoint in {manager.directory}: {_short(e)}. Nothing was overwritten: "
                    f"{intact}. Free disk space (or fix permissions) and re-run the same command to continue.")


def save(manager: ocp.CheckpointManager, step: int, state, position: dict, force: bool = False) -> bool:
  """Starts an (async) save of the state and the data position (what the data order depends on: train.py's
  `data_position`); WriteError if an earlier or this save failed."""
  if not force and not manager.should_save(step):
    return False
  data = {"position": dict(position), "state": manifest(state)}
  try:
    return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=DataStateSave(data)),
                        force=force)
  except Exception as e:  # pylint: disable=broad-except
    raise _write_failed(manager, e) from None


def wait(manager: ocp.CheckpointManager, block: bool = True) -> None:
  """Blocks until pending saves are durable (block=False: only checks finished ones); WriteError if one failed."""
  try:
    manager.wait_until_finished() if block else manager.check_for_errors()
  except Exception as e:  # pylint: disable=broad-except
    raise _write_failed(manager, e) from None


def restore(source, step: int, abstract_state, with_data: bool = True, part: tuple[str, ...] = ()):
  """source: the run's CheckpointManager, or (readers) the WORKDIR/checkpoints path, read through a plain
  Orbax Checkpointer that writes nothing. abstract_state: a pytree of jax.ShapeDtypeStruct with the target
  shardings (any mesh).

  part: the path of one subtree of the state, e.g. ('target',) or ('params', 'encoder'); abstract_state
  is then that subtree alone, and only its arrays are read (an Orbax partial restore: loading one
  encoder of a ViT-H/14 costs one encoder's memory, not the ~5 encoders of the whole train state).

  Returns (state or the subtree, the data item without the manifest or None): {'position': ...}, or
  {'iterator': ...} in checkpoints written before the data position was global. Raises ConfigError when the
  checkpoint holds another model, DamagedCheckpoint when it cannot be read whole or an array differs
  from its fingerprint.
  """
  manager = source if isinstance(source, ocp.CheckpointManager) else None
  directory = epath.Path(manager.directory if manager else storage.path(source)) / str(step)
  try:
    saved = read_data(directory / "data")["state"]
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpoint(f"its manifest in data/ cannot be read ({_short(e)})") from e
  if part:
    # Nested dicts name the arrays as the TrainState does ('target/...', 'params/encoder/...'), so the
    # manifest's entries under the part are compared and checked like those of a whole state.
    for key in reversed(part):
      abstract_state = {key: abstract_state}
    prefix = "/".join(part) + "/"
    saved = {name: entry for name, entry in saved.items() if name.startswith(prefix)}
  wrong = mismatches(saved, abstract_state)
  convert = None
  if wrong and not part and _former_optimizer(saved):
    abstract_state, convert = _from_former_optimizer(abstract_state)
    wrong = mismatches(saved, abstract_state)
  if wrong:
    layout = ""
    if any("/blocks/" in line for line in wrong) and any("/blocks_0/" in line for line in wrong):
      layout = ("\nThe block layouts differ (model.scan_layers): rewrite the checkpoint in the other one with "
                "python -m ijepa_jax.convert --workdir=THIS_WORKDIR --config=... --config.model.scan_layers=... "
                "--out=NEW_WORKDIR.")
    raise ConfigError(f"checkpoint {directory} was written for another model; these arrays differ from "
                      f"the config:\n" + "\n".join(wrong[:40]) + ("\n  ..." if len(wrong) > 40 else "") +
                      "\nUse the config (and overrides) the checkpoint was written with, or another --workdir."
                      + layout)
  if part:
    items = {"state": ocp.args.PyTreeRestore(
        item=abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
        partial_restore=True)}
  else:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
  if with_data:
    items["data"] = DataStateRestore()
  try:
    if manager is not None:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
    else:
      with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(directory, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpoint(f"it cannot be read ({_short(e)})") from e
  got = manifest(restored["state"])
  bad = [n for n in saved if got[n]["fingerprint"] != saved[n]["fingerprint"]]
  if bad:
    raise DamagedCheckpoint(f"{len(bad)} array(s) differ from what was saved: {', '.join(bad[:5])}")
  state = restored["state"]
  if convert:
    state = convert(state)
  for key in part:
    state = state[key]
  data = {k: v for k, v in restored["data"].items() if k != "state"} if with_data else None
  return state, data


# Checkpoints written before the optimizer was optax.adamw under optax.inject_hyperparams hold
# (Adam's state, the weight decay's step counter, the lr's step counter) at opt_state/0, 1, 2.
def _former_optimizer(saved: dict) -> bool:
  return any(name.startswith("opt_state/0/mu/") for name in saved)


def _from_former_optimizer(abstract_state):
  """(the state's abstract tree in the former layout, a function former state -> today's state): Adam's
  moments and count carried over; the lr and weight decay, set from the step before each update, start at 0."""
  adam = abstract_state.opt_state.inner_state[0]
  former = abstract_state.replace(opt_state=(adam, {"count": adam.count}, {"count": adam.count}))

  def convert(state):
    # Only the scalars are new (the other inner states hold no arrays): nothing of Adam's size is allocated.
    abstract = abstract_state.opt_state
    zeros = {k: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding) for k, a in abstract.hyperparams.items()}
    adam_state = state.opt_state[0]
    return state.replace(opt_state=abstract._replace(count=jnp.copy(adam_state.count), hyperparams=zeros,
                                                     inner_state=(adam_state, *abstract.inner_state[1:])))

  return former, convert


class DamagedCheckpoint(Exception):
  pass


def _short(e: Exception) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _all_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def restore_latest(manager: ocp.CheckpointManager, workdir: str, abstract_state, report):
  """(step, state, data item) from the newest checkpoint that restores whole, or None if there are
  none. Damaged ones are reported and moved to WORKDIR/damaged_checkpoints/ (never deleted)."""
  aside = storage.path(workdir) / "damaged_checkpoints"
  moved = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, data_item = restore(manager, step, abstract_state)
      problem = None
    except DamagedCheckpoint as e:
      problem = str(e)
    if _all_ok(problem is None):  # every process must agree before using (or dropping) a checkpoint
      return step, state, data_item
    target = aside / f"{step}"
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      while target.exists():
        target = target.with_name(target.name + "_")
      # A rename locally; on Cloud Storage a copy of every object, then their deletion.
      (storage.path(checkpoint_dir(workdir)) / str(step)).rename(target)
    moved.append(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"moved damaged checkpoint {step}")
    report(f"warning: checkpoint {step} is damaged ({problem or 'on another process'}); moved it to {target} "
           f"and trying the previous one.")
    manager.reload()
  if moved:
    raise ConfigError(f"no checkpoint in {checkpoint_dir(workdir)} could be restored (the damaged ones are now in "
                      f"{aside}). Re-run to start from step 0, or use another --workdir.")
  return None


def restore_state(path: str, abstract_state, part: tuple[str, ...] = ()):
  """Restores only the train state, or only its subtree at `part` (see `restore`), from
  WORKDIR/checkpoints/<step> (for notebooks and evaluation), checked against its manifest like `restore`."""
  path = storage.path(path)
  try:
    return restore(path.parent, int(path.name), abstract_state, with_data=False, part=part)[0]
  except DamagedCheckpoint as e:
    raise ConfigError(f"checkpoint {path} is damaged: {e}. Load an earlier step.") from None
