"""The training loop on tiny configs: one compile, loss goes down, mesh invariance, exact resume."""
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_config
from ijepa_jax import data, optim, sharding, train
from ijepa_jax.errors import ConfigError
from ijepa_jax.masks import MultiBlockSampler


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_one_compile_over_twenty_steps_and_loss_decreases(tmp_path):
  out = train.train_and_evaluate(tiny_config(total_steps=20), str(tmp_path))
  assert out["compiles"] == 1          # 20 batches, 20 different mask sets, one program
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == list(range(1, 21))
  for key in ("loss", "lr", "wd", "momentum", "images_per_sec"):
    assert all(np.isfinite(r[key]) for r in rows), key
  losses = [r["loss"] for r in rows]
  assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:3])
  assert rows[0]["momentum"] == pytest.approx(0.996) and rows[-1]["momentum"] > rows[0]["momentum"]


def test_data_wait_is_logged_and_sees_a_slow_pipeline(tmp_path, monkeypatch):
  """data_wait_ms is the host's time in next(iterator) per step: small with prefetch, the delay when data
  is the limit (here a pipeline made to sleep 0.2 s per batch)."""
  fast = tmp_path / "fast"
  train.train_and_evaluate(tiny_config(total_steps=8, log_every=4), str(fast))
  rows = _rows(fast)
  assert all(0 <= r["data_wait_ms"] and 0 <= r["data_wait_fraction"] <= 1 for r in rows)
  assert rows[-1]["data_wait_ms"] < 100

  from ijepa_jax import data
  real = data.make_pretrain_dataset

  class Slow:
    def __init__(self, dataset):
      self._it = iter(dataset)

    def __iter__(self):
      return self

    def __next__(self):
      import time
      time.sleep(0.2)
      return next(self._it)

  monkeypatch.setattr(data, "make_pretrain_dataset", lambda *a, **k: Slow(real(*a, **k)))
  slow = tmp_path / "slow"
  train.train_and_evaluate(tiny_config(total_steps=8, log_every=4), str(slow))
  last = _rows(slow)[-1]
  assert last["data_wait_ms"] >= 190 and last["data_wait_fraction"] > 0.5, last


def test_without_updates_the_loss_does_not_fall(tmp_path):
  """Negative control for the test above: with lr = 0 the same 20 batches give no such drop."""
  c = tiny_config(total_steps=20)
  c.optim.lr = c.optim.start_lr = c.optim.final_lr = 0.0
  train.train_and_evaluate(c, str(tmp_path))
  losses = [r["loss"] for r in _rows(tmp_path)]
  assert np.mean(losses[-5:]) > 0.97 * np.mean(losses[:3])


def test_resume_continues_with_exactly_the_next_batches(tmp_path):
  full, split = tmp_path / "full", tmp_path / "split"
  train.train_and_evaluate(tiny_config(), str(full))
  train.train_and_evaluate(tiny_config(run_steps=6), str(split))      # stops at 6, checkpointed
  assert [r["step"] for r in _rows(split)] == list(range(1, 7))
  out = train.train_and_evaluate(tiny_config(), str(split))          # same command: resumes
  a, b = _rows(full), _rows(split)
  assert [r["step"] for r in b] == list(range(1, 13))
  assert [r["loss"] for r in a] == [r["loss"] for r in b]             # bit-identical losses
  final = train.train_and_evaluate(tiny_config(), str(full))["state"]  # restored, nothing to train
  jax.tree.map(np.testing.assert_array_equal, final.params, out["state"].params)
  jax.tree.map(np.testing.assert_array_equal, final.target, out["state"].target)
  with pytest.raises(ConfigError, match=r"batch_size 16 -> 8.*--config.data.accept_new_order=True"):
    train.train_and_evaluate(tiny_config(batch_size=8), str(full))   # another data order: refused, named


def test_check_data_order():
  """What a checkpoint's data position allows: the same order; another one (batch size, seed, dataset size,
  or a checkpoint from before the order was global) only with data.accept_new_order; an imported
  checkpoint (no position) anything."""
  c = tiny_config()
  same = {"position": train.data_position(c, 100, 4)}
  train.check_data_order(c, same, 100, 4)
  train.check_data_order(c, {"position": {}}, 100, 4)                 # ijepa_jax.convert's
  for item, n, what in (({"position": train.data_position(tiny_config(seed=1), 100, 4)}, 100, "seed 1 -> 0"),
                        (same, 90, "num_examples 100 -> 90"),
                        ({"iterator": {"next_index": 4}}, 100, "older version")):
    with pytest.raises(ConfigError, match=f"{what}.*--config.data.accept_new_order=True"):
      train.check_data_order(c, item, n, 4)
    c.data.accept_new_order = True
    train.check_data_order(c, item, n, 4)
    c.data.accept_new_order = False


MESH_SCRIPT = textwrap.dedent("""
    import sys, json, jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from ijepa_jax import train, sharding
    from ijepa_jax.masks import MultiBlockSampler
    from ijepa_jax import data
    results = {{}}
    # the reference; data parallel; both axes (both ways); FSDP; accumulation alone, on both axes, with FSDP
    for data_axis, fsdp, accum in [(1, 1, 1), (8, 1, 1), (4, 2, 1), (2, 4, 1), (1, 8, 1),
                                   (1, 1, 2), (1, 1, 4), (4, 2, 2), (1, 8, 2)]:
      c = tiny_config(batch_size=16, grad_accum_steps=accum)
      c.mesh.data, c.mesh.fsdp = data_axis, fsdp
      devices = jax.devices()[: data_axis * fsdp]
      mesh = sharding.make_mesh(c.mesh, devices)
      sampler = MultiBlockSampler.from_config(c.mask, c.data.image_size // c.model.patch_size)
      _, _, init, step = train.build(c, mesh, sampler, 12, 3)
      state = init()
      it = iter(data.make_pretrain_dataset(c, sampler))
      losses = []
      for _ in range(2):
        b = next(it)
        state, m = train.run_step(step, mesh, c, state, sharding.global_batch(b, mesh))
        losses.append(float(m["loss"]))
      leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
      results[f"{{data_axis}}x{{fsdp}}" + (f" accum {{accum}}" if accum > 1 else "")] = dict(losses=losses, params=np.concatenate(leaves).tolist()[:5000])
    from ijepa_jax.errors import ConfigError
    c = tiny_config(batch_size=12)       # 12 images cannot be split over 8 data-parallel devices
    try:
      train.train_and_evaluate(c, {workdir!r})
      results["batch_error"] = ""
    except ConfigError as e:
      results["batch_error"] = str(e)
    c = tiny_config(batch_size=16, grad_accum_steps=4)   # micro-batches of 4 cannot cover 8 devices
    try:
      train.train_and_evaluate(c, {workdir!r})
      results["accum_error"] = ""
    except ConfigError as e:
      results["accum_error"] = str(e)
    print("RESULT" + json.dumps(results))
""")


def test_same_loss_and_params_on_1_and_8_devices_and_with_grad_accumulation(tmp_path):
  script = MESH_SCRIPT.format(tests=os.path.join(REPO, "tests"), workdir=str(tmp_path))
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert "is not divisible by the 8 devices" in results.pop("batch_error")
  assert "grad_accum_steps=4 does not split batch_size=16" in results.pop("accum_error")
  assert set(results) == {"1x1", "8x1", "4x2", "2x4", "1x8", "1x1 accum 2", "1x1 accum 4", "4x2 accum 2", "1x8 accum 2"}
  ref = results.pop("1x1")
  for name, r in results.items():
    np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(r["params"], ref["params"], rtol=1e-5, atol=1e-6, err_msg=name)


def test_config_errors_before_compiling(tmp_path):
  with pytest.raises(ConfigError, match="patch_size"):
    train.train_and_evaluate(tiny_config(**{"data.image_size": 15}), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match="mesh"):
    c = tiny_config()
    c.mesh.data = 3
    train.train_and_evaluate(c, str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="loss"):
    train.train_and_evaluate(tiny_config(loss="l1"), str(tmp_path / "c"))
  with pytest.raises(ConfigError, match="min_keep"):
    train.train_and_evaluate(tiny_config(**{"mask.min_keep": 10}), str(tmp_path / "d"))


def test_divergence_stops_with_the_step_and_keeps_good_checkpoints(tmp_path):
  c = tiny_config(total_steps=12, checkpoint_every=1)
  c.optim.lr = c.optim.start_lr = 1e12                      # diverges within a few steps
  with pytest.raises(FloatingPointError, match=r"not finite at step (\d+); the last checkpoint is intact") as e:
    train.train_and_evaluate(c, str(tmp_path))
  bad = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  rows = _rows(tmp_path)
  assert rows[-1]["step"] == bad and rows[-1]["nonfinite_steps"] == 1 and rows[-2]["nonfinite_steps"] == 0
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert saved and max(saved) < bad                         # nothing written from a broken state


def _nan_batch(c, sampler, rng):
  masks = sampler(rng, c.batch_size)
  images = np.zeros((c.batch_size, c.data.image_size, c.data.image_size, 1), np.float32)
  images[0, 3, 3, 0] = np.nan
  return {"images": images, "skipped": np.zeros(c.batch_size, np.int32), **masks}


@pytest.mark.parametrize("skip", [False, True])
def test_a_nonfinite_step_is_flagged_and_skipped_on_request(skip):
  c = tiny_config(skip_nonfinite_steps=skip)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  sampler = MultiBlockSampler.from_config(c.mask, c.data.image_size // c.model.patch_size)
  _, _, init, step = train.build(c, mesh, sampler, 12, 3)
  state = init()
  before = jax.tree.map(np.asarray, state)
  rng0 = np.random.default_rng(0)
  state, m = train.run_step(step, mesh, c, state, _nan_batch(c, sampler, rng0))
  assert int(m["nonfinite"]) == 1 and int(state.step) == 1
  after = jax.tree.map(np.asarray, (state.params, state.target, state.opt_state))
  if skip:   # the weights and the optimizer's state stay; the step advances, and every schedule reads it
    jax.tree.map(np.testing.assert_array_equal, after, (before.params, before.target, before.opt_state))
    state, m = train.run_step(step, mesh, c, state, _nan_batch(c, sampler, rng0))
    finite = _nan_batch(c, sampler, rng0)
    finite["images"] = np.zeros_like(finite["images"])
    state, m = train.run_step(step, mesh, c, state, finite)
    assert int(m["nonfinite"]) == 0 and int(state.step) == 3
    assert int(state.opt_state.inner_state[0].count) == 1   # one real Adam update
    schedules = optim.make_schedules(c.optim, 12, 3)
    assert float(state.opt_state.hyperparams["learning_rate"]) == float(schedules.lr(2))  # step 2's, not step 0's
  else:
    assert not np.all(np.isfinite(after[0]["encoder"]["patch_embed"]["kernel"]))


def test_skip_nonfinite_steps_counts_them_and_finishes(tmp_path):
  c = tiny_config(total_steps=12, skip_nonfinite_steps=True)
  c.optim.lr = c.optim.start_lr = 1e12
  train.train_and_evaluate(c, str(tmp_path))
  rows = _rows(tmp_path)
  assert rows[-1]["step"] == 12 and rows[-1]["nonfinite_steps"] > 0
  assert rows[-1]["nonfinite_steps"] == sum(not np.isfinite(r["loss"]) or not np.isfinite(r["grad_norm"])
                                            for r in rows)


# ============================================================================ mask.counts='release' (padded masks)
def test_release_counts_one_compile_and_the_loss_decreases(tmp_path):
  out = train.train_and_evaluate(tiny_config(total_steps=12, **{"mask.counts": "release"}), str(tmp_path))
  assert out["compiles"] == 1          # 12 batches of different real lengths, one program
  rows = _rows(tmp_path)
  losses = [r["loss"] for r in rows]
  assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
  assert all(r["context_tokens_cut"] == 0 for r in rows)   # num_context -1: padded to the longest, never cut


def test_padded_step_equals_the_unpadded_step():
  """The same masks, once as counts='fixed' arrays and once padded with counts: the same loss, gradient
  norm and updated weights (padding filled with tokens that are in no mask)."""
  fixed, padded = tiny_config(), tiny_config(**{"mask.counts": "release"})
  mesh = sharding.make_mesh(fixed.mesh, jax.devices()[:1])
  grid = fixed.data.image_size // fixed.model.patch_size
  s_fixed = MultiBlockSampler.from_config(fixed.mask, grid)
  s_padded = MultiBlockSampler.from_config(padded.mask, grid)
  _, _, init, step_f = train.build(fixed, mesh, s_fixed, 12, 3)
  _, _, _, step_p = train.build(padded, mesh, s_padded, 12, 3)
  rng = np.random.default_rng(0)
  b = fixed.batch_size
  masks = s_fixed(rng, b)
  images = rng.integers(0, 256, (b, 16, 16, 1), dtype=np.uint8)
  batch = {"images": images, "skipped": np.zeros(b, np.int32), **masks}
  kc, (m, kt) = masks["context_idx"].shape[1], masks["target_idx"].shape[1:]
  pad_c, pad_t = s_padded.num_context - kc, s_padded.num_target - kt
  assert pad_c > 0 and pad_t > 0
  padded_batch = {
      "images": images, "skipped": np.zeros(b, np.int32),
      "context_idx": np.concatenate([masks["context_idx"], rng.integers(0, grid ** 2, (b, pad_c))], 1).astype(np.int32),
      "target_idx": np.concatenate([masks["target_idx"], rng.integers(0, grid ** 2, (b, m, pad_t))], 2).astype(np.int32),
      "context_count": np.full(b, kc, np.int32), "target_count": np.full(b, kt, np.int32),
      "context_cut": np.zeros(b, np.int32)}
  state_f, metrics_f = train.run_step(step_f, mesh, fixed, init(), batch)
  state_p, metrics_p = train.run_step(step_p, mesh, padded, init(), padded_batch)
  assert float(metrics_p["loss"]) == pytest.approx(float(metrics_f["loss"]), rel=1e-6)
  assert float(metrics_p["grad_norm"]) == pytest.approx(float(metrics_f["grad_norm"]), rel=1e-5)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=0, atol=1e-6), state_p.params, state_f.params)


def test_padded_loss_is_the_mean_of_each_images_mean():
  # the release: a mean per per-GPU batch (one block length each), averaged over GPUs by DDP
  from ijepa_jax.step import prediction_loss
  rng = np.random.default_rng(0)
  preds, targets = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 5, 4))
  counts = np.array([5, 2], np.int32)
  for kind in ("l2", "smooth_l1"):
    per_image = [float(prediction_loss(preds[i:i + 1, :, :k], targets[i:i + 1, :, :k], kind)) for i, k in
                 enumerate(counts)]
    assert float(prediction_loss(preds, targets, kind, counts)) == pytest.approx(np.mean(per_image), rel=1e-6)


# ============================================================================ the ablation's switches
@pytest.mark.parametrize("strategy", ["rasterized", "block", "random"])
def test_each_mask_strategy_trains_with_one_compile(tmp_path, strategy):
  out = train.train_and_evaluate(tiny_config(total_steps=3, **{"mask.strategy": strategy}), str(tmp_path))
  assert out["compiles"] == 1          # 3 batches of different masks, one program
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)


def test_pixel_targets_train_with_one_compile(tmp_path):
  out = train.train_and_evaluate(tiny_config(total_steps=8, target="pixels"), str(tmp_path))
  assert out["compiles"] == 1
  p, c = tiny_config().model.patch_size, tiny_config().data.channels
  assert out["state"].params["predictor"]["predictor_proj"]["kernel"].shape[-1] == p * p * c
  assert all(np.isfinite(r["loss"]) for r in _rows(tmp_path))


def test_pixel_targets_loss_decreases_on_a_fixed_batch():
  """2x2-pixel patches of 16 px images are near noise over 20 fresh batches of the tiny config (the loss
  hardly moves there), so the learning check fits one batch of striped images (a patch's normalised
  pixels are a function of its position) with its masks.""" 
  from ijepa_jax.mask_strategies import make_sampler
  c = tiny_config(target="pixels")
  c.optim.lr = c.optim.start_lr = 1e-2    # Adam moves each weight ~lr per step: 60 steps of 1e-3 barely start
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  sampler = make_sampler(c.mask, c.data.image_size // c.model.patch_size)
  _, _, init, step = train.build(c, mesh, sampler, 1000, 0)
  batch, state, losses = _one_batch(c, sampler), init(), []
  s = c.data.image_size
  yy, xx = np.mgrid[:s, :s]
  stripes = (128 + 100 * np.sin(0.9 * xx + 0.5 * yy))[None, ..., None].astype(np.uint8)
  batch["images"] = np.repeat(stripes, c.batch_size, axis=0)
  for _ in range(60):
    state, m = train.run_step(step, mesh, c, state, batch)
    losses.append(float(m["loss"]))
  assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.7 * losses[0]


def _one_batch(c, sampler, seed=0):
  rng = np.random.default_rng(seed)
  b, s = c.batch_size, c.data.image_size
  return {"images": rng.integers(0, 256, (b, s, s, c.data.channels), dtype=np.uint8),
          "skipped": np.zeros(b, np.int32), **sampler(rng, b)}


def test_pixel_targets_do_not_run_the_target_encoder():
  """A NaN target encoder changes nothing in a pixel-target step's loss (it would poison a representation one)."""
  from ijepa_jax.mask_strategies import make_sampler
  losses = {}
  for target in ("pixels", "representation"):
    c = tiny_config(target=target)
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    sampler = make_sampler(c.mask, c.data.image_size // c.model.patch_size)
    _, _, init, step = train.build(c, mesh, sampler, 12, 3)
    batch = _one_batch(c, sampler)
    state = init()
    clean = float(train.run_step(step, mesh, c, state, batch)[1]["loss"])
    state = init()
    state = state.replace(target=jax.tree.map(lambda t: t * np.nan, state.target))
    losses[target] = (clean, float(train.run_step(step, mesh, c, state, batch)[1]["loss"]))
  assert losses["pixels"][0] == losses["pixels"][1] and np.isfinite(losses["pixels"][0])
  assert np.isfinite(losses["representation"][0]) and np.isnan(losses["representation"][1])


def test_pixel_targets_are_each_patchs_pixels_normalised_as_mae():
  from ijepa_jax.step import pixel_targets
  rng = np.random.default_rng(0)
  b, g, p, c = 2, 3, 4, 3
  images = rng.normal(size=(b, g * p, g * p, c)).astype(np.float32)
  target_idx = rng.integers(0, g * g, (b, 2, 5)).astype(np.int32)
  got = np.asarray(pixel_targets(images, target_idx, p))
  assert got.shape == (b, 2, 5, p * p * c)
  for i in range(b):
    for j in range(2):
      for k in range(5):
        row, col = divmod(int(target_idx[i, j, k]), g)
        x = images[i, row * p:(row + 1) * p, col * p:(col + 1) * p].reshape(-1).astype(np.float64)
        want = (x - x.mean()) / np.sqrt(x.var(ddof=1) + 1e-6)   # MAE: torch's unbiased var, eps 1e-6
        np.testing.assert_allclose(got[i, j, k], want, rtol=1e-5, atol=1e-5)


def test_a_config_file_of_an_earlier_version_is_completed_from_the_defaults():
  """A workdir's config.json without keys added since (mask.strategy, target, model.scan_layers, model.remat):
  what that version did without them (defaults.EARLIER: unrolled blocks, no remat), else today's defaults;
  so a config from before the switches is today's config with the switches written out."""
  import ml_collections
  from ijepa_jax import defaults
  explicit = tiny_config(target="representation", **{"mask.strategy": "multiblock"})
  bare = explicit.to_dict()
  del bare["target"], bare["mask"]["strategy"], bare["model"]["scan_layers"], bare["model"]["remat"]
  bare["model"]["retired_key"] = 1       # a key no longer read stays as it was
  done = defaults.complete(ml_collections.ConfigDict(bare))
  assert (done.model.scan_layers, done.model.remat, done.model.retired_key) == (False, "none", 1)
  del done.model["retired_key"]
  done.model.scan_layers, done.model.remat = explicit.model.scan_layers, explicit.model.remat
  assert done.to_dict() == explicit.to_dict()


def test_an_unknown_target_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match="representation.*pixels"):
    train.train_and_evaluate(tiny_config(target="pixel"), str(tmp_path))


def _launch_recipes(readme: str):
  """(name, processes, devices, config file, overrides) of every multi-process launch in the README's sh blocks:
  a Cloud TPU pod slice (processes = the slice's hosts), srun (nodes x tasks), one machine with N GPUs."""
  import re
  from ijepa_jax import tpu_topologies
  recipes = []
  for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
    comment, slice_name = "", None
    for command in block.replace("\\\n", " ").splitlines():
      named = re.findall(r"\b(v\d\w*-\d+)\b", command)
      slice_name = named[0] if named else slice_name   # the slice a comment or --accelerator-type names first
      if command.startswith("#"):
        comment = command
        continue
      config = re.search(r"ijepa_jax\.main .*--config=(\S+)", command)
      if config is None:            # not a training launch, or a generic form (--config=... elided)
        continue
      config = config.group(1).strip("\"'")
      overrides = dict(re.findall(r"--config\.([\w.]+)=(\S+)", command))
      if "--worker=all" in command:
        tpu = tpu_topologies.parse(slice_name)
        recipes.append((f"TPU {tpu.name}", tpu.hosts, tpu.chips, config, overrides))
      elif command.startswith("srun"):
        flags_ = {k: int(v) for k, v in re.findall(r"--(nodes|ntasks-per-node|gpus-per-task)=(\d+)", command)}
        processes = flags_["nodes"] * flags_["ntasks-per-node"]
        recipes.append(("SLURM", processes, processes * flags_.get("gpus-per-task", 1), config, overrides))
      elif (gpus := re.search(r"(\d+) GPUs", comment)) and "--distributed" not in command:
        recipes.append(("multi-GPU", 1, int(gpus.group(1)), config, overrides))
  return recipes


def test_launch_recipes_pass_the_config_checks():
  """Every launch recipe in the README starts: its processes and devices fit the config's rules (the batch
  splits over devices, processes and mask groups). vit_h14 accepts 16, 32 and 64 hosts at batch 2048, each
  holding part of a mask group when it reads fewer than 128 images; numbers that do not divide name the fix."""
  from conftest import REPO, load_file
  from ijepa_jax import tpu_topologies
  from ijepa_jax.mask_strategies import make_sampler
  recipes = _launch_recipes(open(os.path.join(REPO, "README.md")).read())
  assert {r[0].split()[0] for r in recipes} == {"TPU", "SLURM", "multi-GPU"}, recipes
  for name, processes, devices, config_file, overrides in recipes:
    config = load_file(config_file).get_config()
    assert not set(overrides) - {"data.path", "data.source"}, (name, overrides)   # nothing that sets batch or mesh
    sampler = make_sampler(config.mask, config.data.image_size // config.model.patch_size)
    train.check_processes(config, sampler, processes, devices)
  h14 = load_file("configs/vit_h14.py").get_config()
  sampler = make_sampler(h14.mask, h14.data.image_size // h14.model.patch_size)
  for slice_name in ("v5p-128", "v5p-256", "v6e-256"):
    tpu = tpu_topologies.parse(slice_name)
    train.check_processes(h14, sampler, tpu.hosts, tpu.chips)      # 16, 32 and 64 processes
  with pytest.raises(ConfigError, match="--config.batch_size to a multiple of 96"):
    train.check_processes(h14, sampler, 48, 96)
  h14.mask.reference_batch = 96
  with pytest.raises(ConfigError, match="--config.mask.reference_batch to a divisor of 2048"):
    train.check_processes(h14, make_sampler(h14.mask, 16), 16, 64)


def test_context_buckets_train_as_the_one_padded_shape(tmp_path, capsys):
  """mask.context_buckets: each batch padded to the shortest bucket holding its longest context, every bucket
  compiled before step 1 (one program each, none after), and the same losses as padding every batch to
  num_context. A restart reads the programs back from the workdir's compilation cache."""
  one = train.train_and_evaluate(tiny_config(total_steps=8, **{"mask.counts": "release"}), str(tmp_path / "one"))
  c = tiny_config(total_steps=8, run_steps=4, **{"mask.counts": "release", "mask.context_buckets": (16, 24)})
  sampler = MultiBlockSampler.from_config(c.mask, 8)
  widths = [b["context_idx"].shape[1] for b, _ in zip(data.make_pretrain_dataset(c, sampler), range(8))]
  assert set(widths) <= {16, 24, 64} and len(set(widths)) >= 2, widths
  capsys.readouterr()
  first = train.train_and_evaluate(c, str(tmp_path / "buckets"))
  assert first["compiles"] == 3                                           # 16, 24 and num_context (64)
  assert "Compiling the train step for contexts of 24 tokens (2 of 3)" in capsys.readouterr().out
  again = train.train_and_evaluate(c, str(tmp_path / "buckets"))          # resumed at step 4
  assert again["compiles"] == 3 and one["compiles"] == 1
  assert "Train step compiled for 3 batch shape(s)" in (out := capsys.readouterr().out)
  assert "(3 read from the compilation cache in " in out, out[-2000:]
  losses = [r["loss"] for r in _rows(tmp_path / "buckets")]
  np.testing.assert_allclose(losses, [r["loss"] for r in _rows(tmp_path / "one")], rtol=2e-5, atol=1e-6)
