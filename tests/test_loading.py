"""ijepa_jax.loading: one encoder restored alone equals the same encoder of the whole train state."""
import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from ijepa_jax import loading, train
from ijepa_jax.errors import ConfigError


@pytest.mark.parametrize("scan_layers", [False, True])
def test_load_encoder_reads_one_encoder_bit_identical_to_the_whole_state(tmp_path, scan_layers):
  train.train_and_evaluate(tiny_config(run_steps=4, **{"model.scan_layers": scan_layers}), str(tmp_path))
  config, encoder, state = loading.load(str(tmp_path))
  # After 4 steps the EMA target and the context encoder differ: each load must find its own.
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.target),
                                                       jax.tree.leaves(state.params["encoder"])))
  for which, expected in (("target", state.target), ("context", state.params["encoder"])):
    got_config, got_encoder, params, step = loading.load_encoder(str(tmp_path), encoder=which)
    assert step == 4 and got_config.to_dict() == config.to_dict() and got_encoder == encoder
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, expected)
  with pytest.raises(ConfigError, match="use 'target' or 'context'"):
    loading.load_encoder(str(tmp_path), encoder="predictor")


def _restored_bytes(tmp_path, monkeypatch, **kw):
  """Bytes of the arrays Orbax hands back from one load (what a load costs in memory)."""
  import orbax.checkpoint as ocp
  sizes = []
  original = ocp.Checkpointer.restore   # what readers restore through (no manager: they write nothing)

  def counting(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    sizes.append(sum(x.nbytes for x in jax.tree.leaves(out["state"])))
    return out

  monkeypatch.setattr(ocp.Checkpointer, "restore", counting)
  result = kw.pop("fn")(str(tmp_path), **kw)
  monkeypatch.undo()
  return sizes[-1], result


def test_load_encoder_reads_only_its_arrays_and_checks_them(tmp_path, monkeypatch):
  train.train_and_evaluate(tiny_config(run_steps=4), str(tmp_path))
  whole, (_, _, state) = _restored_bytes(tmp_path, monkeypatch, fn=loading.load)
  part, (_, _, params, _) = _restored_bytes(tmp_path, monkeypatch, fn=loading.load_encoder)
  encoder_bytes = sum(x.nbytes for x in jax.tree.leaves(state.target))
  assert part == encoder_bytes and whole > 4 * encoder_bytes    # params, target, 2 Adam moments, predictor
  # The manifest guards a partial restore too: a silently changed target array is found ...
  manifest = tmp_path / "checkpoints" / "4" / "data" / "data.json"
  saved = json.loads(manifest.read_text())
  saved["state"]["target/blocks_0/mlp/fc1/kernel"]["fingerprint"] += 1
  manifest.write_text(json.dumps(saved))
  with pytest.raises(ConfigError, match="is damaged.*target/blocks_0/mlp/fc1/kernel"):
    loading.load_encoder(str(tmp_path))
  # ... while the context encoder, untouched, still loads.
  loading.load_encoder(str(tmp_path), encoder="context")


def test_train_load_is_the_whole_state_loader():
  assert train.load is loading.load


def test_reading_a_live_run_never_disturbs_it(tmp_path):
  """A notebook reading a run while it trains: load_encoder in a loop, while the run checkpoints every step
  and prunes to 2. The run finishes (rc 0), every checkpoint it kept restores, and the reads wrote nothing:
  no damaged_checkpoints/, no file the run did not write itself."""
  import os
  import subprocess
  import sys
  import time
  from conftest import REPO
  from test_cli import TINY
  run = subprocess.Popen(
      [sys.executable, "-m", "ijepa_jax.main", "--config=configs/fashion_mnist.py", f"--workdir={tmp_path}", *TINY,
       "--config.total_steps=40", "--config.checkpoint_every=1", "--config.keep_checkpoints=2",
       "--config.probe.enabled=False", "--config.write_plots=False", "--config.cpu_devices=1"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  steps_read, deadline = set(), time.time() + 300
  while run.poll() is None and time.time() < deadline:
    try:
      steps_read.add(loading.load_encoder(str(tmp_path))[3])
    except ConfigError as e:   # before the first checkpoint (no config.json / checkpoint yet) only
      assert not steps_read and ("not found" in str(e) or "no checkpoint" in str(e)), e
      time.sleep(0.2)
  out, err = run.communicate(timeout=60)
  assert run.returncode == 0, err[-3000:]
  assert len(steps_read) >= 3, steps_read   # it read while the run was checkpointing
  assert "Finished at step 40 of 40" in out and "damaged" not in out + err
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["39", "40"]
  assert not (tmp_path / "damaged_checkpoints").exists()
  for step in (39, 40):
    assert loading.load(str(tmp_path), step=step)[2].step == step
