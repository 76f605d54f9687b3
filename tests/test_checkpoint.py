"""Damaged checkpoints fall back to the previous one; a checkpoint of another model is a clear error."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from ijepa_jax import train
from ijepa_jax.errors import ConfigError


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _largest_state_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_state_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _garble(step_dir):
  path = _largest_state_file(step_dir)
  raw = bytearray(open(path, "rb").read())
  for i in range(len(raw) // 4, 3 * len(raw) // 4, 61):
    raw[i] ^= 0xFF
  open(path, "wb").write(bytes(raw))


def _silently_changed(step_dir):
  """An array whose bytes read fine but are not what was saved (stands in for bit rot the reader
  cannot see): its recorded fingerprint no longer matches."""
  path = os.path.join(step_dir, "data", "data.json")
  data = json.loads(open(path).read())
  data["state"]["params/encoder/blocks_0/mlp/fc1/kernel"]["fingerprint"] += 1
  open(path, "w").write(json.dumps(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  train.train_and_evaluate(tiny_config(), str(workdir))
  return _rows(workdir)


@pytest.mark.parametrize("damage", [_truncate, _garble, _silently_changed])
def test_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_used(tmp_path, capsys, damage, reference):
  train.train_and_evaluate(tiny_config(run_steps=8), str(tmp_path))    # checkpoints at steps 4 and 8
  damage(str(tmp_path / "checkpoints" / "8"))
  capsys.readouterr()
  train.train_and_evaluate(tiny_config(), str(tmp_path))
  out = capsys.readouterr().out
  assert "warning: checkpoint 8 is damaged" in out and "Resumed from" in out and "(step 4)" in out
  assert os.path.isdir(tmp_path / "damaged_checkpoints" / "8")           # kept, for the user to inspect
  assert [(r["step"], r["loss"]) for r in _rows(tmp_path)] == [(r["step"], r["loss"]) for r in reference]


def test_no_restorable_checkpoint_is_an_error_and_nothing_is_deleted(tmp_path):
  train.train_and_evaluate(tiny_config(run_steps=8), str(tmp_path))
  for step in ("4", "8"):
    _truncate(str(tmp_path / "checkpoints" / step))
  with pytest.raises(ConfigError, match="no checkpoint .* could be restored.*Re-run to start from step 0"):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "damaged_checkpoints")) == ["4", "8"]


def test_checkpoint_of_another_model_lists_the_differing_arrays(tmp_path):
  train.train_and_evaluate(tiny_config(run_steps=4), str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  other = tiny_config()
  other.model.mlp_dim = 96
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(other, str(tmp_path))
  message = str(e.value)
  assert "written for another model" in message
  assert "params/encoder/blocks_0/mlp/fc1/kernel: checkpoint float32[32, 64], config float32[32, 96]" in message
  assert "target/blocks_0/mlp/fc2/kernel" in message and "params/encoder/blocks_0/attn" not in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before and not os.path.exists(tmp_path / "damaged_checkpoints")


def test_load_checks_the_checkpoint(tmp_path):
  train.train_and_evaluate(tiny_config(run_steps=4), str(tmp_path))
  _, encoder, state = train.load(str(tmp_path))
  assert int(state.step) == 4 and encoder.width == 32
  _silently_changed(str(tmp_path / "checkpoints" / "4"))
  with pytest.raises(ConfigError, match="is damaged.*differ from what was saved"):
    train.load(str(tmp_path))


def test_a_checkpoint_of_the_former_optimizer_layout_resumes_exactly(tmp_path, reference):
  """Checkpoints written when the optimizer state was (Adam's, the weight decay's counter, the lr's counter)
  resume into today's optax.adamw state with the same losses."""
  import shutil
  from typing import NamedTuple

  import optax
  from etils import epath

  from ijepa_jax import checkpoint

  class DecayState(NamedTuple):   # the former hand-written weight decay's state
    count: jax.Array

  train.train_and_evaluate(tiny_config(run_steps=4), str(tmp_path / "a"))
  _, _, state = train.load(str(tmp_path / "a"))
  adam = state.opt_state.inner_state[0]
  former = state.replace(opt_state=(adam, DecayState(state.step), optax.ScaleByScheduleState(state.step)))
  position = checkpoint.read_data(epath.Path(tmp_path / "a" / "checkpoints" / "4" / "data"))["position"]
  shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("checkpoints"))
  manager = checkpoint.make_manager(str(tmp_path / "b"), keep=2, every=4, async_save=False)
  checkpoint.save(manager, 4, former, position, force=True)
  checkpoint.wait(manager)
  manager.close()
  assert "opt_state/1/count" in checkpoint.read_data(epath.Path(tmp_path / "b" / "checkpoints" / "4" / "data"))["state"]
  train.train_and_evaluate(tiny_config(), str(tmp_path / "b"))
  assert [(r["step"], r["loss"]) for r in _rows(tmp_path / "b")] == [(r["step"], r["loss"]) for r in reference]
