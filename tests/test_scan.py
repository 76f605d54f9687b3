"""model.scan_layers: the blocks under one nn.scan compute what the unrolled blocks compute (loss, gradients,
the update, the last-4-layers features), with stacked parameters on a leading 'layers' axis; the layout maps
are exact; a scanned run checkpoints and resumes."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ijepa_jax import convert, data, sharding, train
from ijepa_jax.errors import ConfigError
from ijepa_jax.evaluation import features
from ijepa_jax.masks import MultiBlockSampler
from ijepa_jax.models import make_models, stack_blocks, unstack_blocks


def _config(scan: bool, remat: str = "none", dtype: str = "float32"):
  """tiny_config with 3 encoder and 2 predictor blocks (one block would hide a wrong layer order)."""
  return tiny_config(**{"model.depth": 3, "model.predictor_depth": 2, "model.scan_layers": scan,
                        "model.remat": remat, "dtype": dtype})


def _build(config):
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  sampler = MultiBlockSampler.from_config(config.mask, config.data.image_size // config.model.patch_size)
  return mesh, sampler, train.build(config, mesh, sampler, 12, 3)


@pytest.fixture(scope="module")
def unrolled():
  """One unrolled model's initial state and two batches: the reference every layout is compared with."""
  config = _config(False)
  mesh, sampler, (_, abstract, init, _) = _build(config)
  it = iter(data.make_pretrain_dataset(config, sampler))
  batches = [next(it) for _ in range(2)]
  return jax.tree.map(np.asarray, init()), batches


def _steps(config, state, batches):
  """[(loss, grad norm, state as numpy)] after each step, one step per batch, from `state` (numpy)."""
  mesh, _, (_, abstract, _, step) = _build(config)
  state = jax.device_put(state, jax.tree.map(lambda s: s.sharding, abstract))
  out = []
  for b in batches:
    state, m = train.run_step(step, mesh, config, state, sharding.global_batch(b, mesh))
    out.append((float(m["loss"]), float(m["grad_norm"]), jax.tree.map(np.asarray, state)))
  return out


def _close(a, b, rtol, what):
  """Every leaf of a within rtol of b, relative to the leaf's largest magnitude (leaves near 0 included)."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(float(np.max(np.abs(y))), 1e-30) if y.size else 1.0
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, err_msg=f"{what} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_scan_gives_the_unrolled_loss_gradients_and_update(unrolled, remat):
  """Two full train steps (targets, context, predictor, AdamW, EMA) from the same state: the scanned model's
  losses, gradients (Adam's first moment after step 1 is 0.1 x the gradient; after step 2 it mixes both),
  parameters and EMA target equal the unrolled model's, after unstacking, to 1e-5."""
  state, batches = unrolled
  ref = _steps(_config(False, remat), state, batches)
  got = _steps(_config(True, remat), stack_blocks(state), batches)
  assert "blocks" in got[0][2].params["encoder"] and "blocks_0" not in got[0][2].params["encoder"]
  mu = lambda s: s.opt_state.inner_state[0].mu   # noqa: E731  (optax.adamw: scale_by_adam first)
  for i, ((loss, norm, s), (ref_loss, ref_norm, r)) in enumerate(zip(got, ref)):
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=f"step {i + 1} loss")
    np.testing.assert_allclose(norm, ref_norm, rtol=1e-5, err_msg=f"step {i + 1} grad norm")
    s = unstack_blocks(s)
    _close(mu(s), mu(r), 1e-5, f"step {i + 1} gradient (Adam mu)")
    _close(s.params, r.params, 1e-5, f"step {i + 1} params")
    _close(s.target, r.target, 1e-5, f"step {i + 1} EMA target")


def test_scan_in_bfloat16_matches_the_unrolled_bfloat16(unrolled):
  """dtype=bfloat16 (the release's autocast) through the scan: the same bf16 computation, so the loss and
  gradients agree far closer than bf16's own rounding (2^-8 = 4e-3) would allow a different one to."""
  state, batches = unrolled
  (ref_loss, ref_norm, ref), = _steps(_config(False, "dots", "bfloat16"), state, batches[:1])
  (loss, norm, got), = _steps(_config(True, "dots", "bfloat16"), stack_blocks(state), batches[:1])
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(norm, ref_norm, rtol=1e-4)
  adam = lambda s: s.opt_state.inner_state[0]   # noqa: E731
  _close(adam(unstack_blocks(got)).mu, adam(ref).mu, 1e-3, "bf16 gradient (Adam mu)")


def test_stacked_parameters_have_a_leading_layers_axis():
  config = _config(True)
  encoder, predictor = make_models(config.model, 16, 1, jnp.float32)
  mesh, sampler, (_, abstract, _, _) = _build(config)
  boxed = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  specs = nn.get_partition_spec(boxed)["params"]
  assert set(specs) == {"patch_embed", "blocks", "norm"}
  assert tuple(specs["blocks"]["attn"]["qkv"]["kernel"]) == ("layers", "embed", "qkv")
  assert tuple(specs["blocks"]["norm1"]["scale"]) == ("layers", "norm")
  for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    stacked = "blocks" in jax.tree_util.keystr(path)
    assert (tuple(spec)[0] == "layers") == stacked, (path, spec)
  shapes = jax.tree.map(lambda x: x.shape, abstract.params)
  assert shapes["encoder"]["blocks"]["mlp"]["fc1"]["kernel"] == (3, 32, 64)
  assert shapes["predictor"]["blocks"]["attn"]["qkv"]["bias"] == (2, 48)
  assert set(abstract.params["predictor"]) == {"predictor_embed", "mask_token", "blocks", "predictor_norm",
                                               "predictor_proj"}
  # The layer axis is never split: under FSDP the stacked kernels are split on 'embed' as before.
  assert ("layers", None) in tuple(config.axis_rules)
  assert tuple(abstract.params["encoder"]["blocks"]["attn"]["qkv"]["kernel"].sharding.spec) in ((None, "fsdp", None),
                                                                                              (None, "fsdp"))


def test_weight_decay_mask_ignores_the_layer_axis(unrolled):
  """Stacked biases and LayerNorms are 2-D but still not decayed; stacked kernels still are."""
  from ijepa_jax.optim import decay_mask
  state, _ = unrolled
  flat, stacked = decay_mask(state.params), decay_mask(stack_blocks(state.params))
  for part in ("encoder", "predictor"):
    assert jax.tree.leaves(stacked[part]["blocks"]) == jax.tree.leaves(flat[part]["blocks_0"])
    assert stacked[part]["blocks"]["attn"]["qkv"]["kernel"] and not stacked[part]["blocks"]["norm1"]["scale"]


def test_stack_and_unstack_are_exact_inverses(unrolled):
  state, _ = unrolled
  stacked = stack_blocks(state)   # the whole TrainState: params, EMA target, Adam mu and nu
  assert stacked.opt_state.inner_state[0].mu["encoder"]["blocks"]["attn"]["qkv"]["kernel"].shape == (3, 32, 96)
  assert "blocks" in stacked.target and not any(k.startswith("blocks_") for k in stacked.target)
  np.testing.assert_array_equal(stacked.params["predictor"]["blocks"]["mlp"]["fc2"]["bias"][1],
                                state.params["predictor"]["blocks_1"]["mlp"]["fc2"]["bias"])
  back = unstack_blocks(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, back, state)
  jax.tree.map(np.testing.assert_array_equal, stack_blocks(back), stacked)
  jax.tree.map(np.testing.assert_array_equal, stack_blocks(stacked), stacked)   # already stacked: unchanged
  jax.tree.map(np.testing.assert_array_equal, unstack_blocks(state), state)
  with pytest.raises(ValueError, match="blocks_0..blocks_1"):
    stack_blocks({"blocks_0": {"w": np.zeros(2)}, "blocks_2": {"w": np.zeros(2)}})


def test_last4_features_are_the_same_in_both_layouts():
  """Depth 5: 'last4' must pick blocks 1..4 of the stacked outputs, as of the unrolled ones."""
  images = np.random.default_rng(0).normal(size=(4, 16, 16, 1)).astype(np.float32)
  out = {}
  for scan in (False, True):
    encoder, _ = make_models(tiny_config(**{"model.depth": 5, "model.scan_layers": scan}).model, 16, 1, jnp.float32)
    if not scan:
      params = nn.unbox(jax.jit(encoder.init)(jax.random.key(0), images)["params"])
    out[scan] = {layers: np.asarray(jax.jit(lambda p, x: features.tokens(encoder, p, x, layers))(
        stack_blocks(params) if scan else params, images)) for layers in features.LAYERS}
  assert out[True]["last4"].shape == (4, 64, 4 * 32)
  for layers in features.LAYERS:
    np.testing.assert_allclose(out[True][layers], out[False][layers], rtol=1e-5, atol=1e-6, err_msg=layers)
  # Not the first four: the unrolled block 0's output (through the final norm) is not among them.
  assert not np.allclose(out[False]["last4"][..., :32], out[False]["last4"][..., 32:64])


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_scanned_run_checkpoints_and_resumes_exactly(tmp_path):
  full, split = tmp_path / "full", tmp_path / "split"
  c = lambda **kw: tiny_config(**{"model.scan_layers": True, "model.depth": 2, "total_steps": 4,  # noqa: E731
                                  "checkpoint_every": 2, **kw})
  train.train_and_evaluate(c(), str(full))
  train.train_and_evaluate(c(run_steps=2), str(split))     # stops at 2, checkpointed
  out = train.train_and_evaluate(c(), str(split))          # resumes
  assert [r["loss"] for r in _rows(full)] == [r["loss"] for r in _rows(split)]
  assert out["state"].params["encoder"]["blocks"]["norm1"]["scale"].shape == (2, 32)
  config, encoder, state = train.load(str(split))
  assert config.model.scan_layers and encoder.scan_layers
  jax.tree.map(np.testing.assert_array_equal, state.params, out["state"].params)
  # The unrolled config cannot restore it, and says how to convert; converted, everything is kept.
  unrolled = tiny_config(**{"model.depth": 2, "total_steps": 4})
  with pytest.raises(ConfigError, match="(?s)block layouts differ.*--workdir="):
    train.train_and_evaluate(unrolled, str(split))
  convert.relayout(unrolled, str(split), str(tmp_path / "unrolled"), log=lambda _: None)
  _, encoder, back = train.load(str(tmp_path / "unrolled"))
  assert not encoder.scan_layers and int(back.step) == 4 and "blocks_1" in back.opt_state.inner_state[0].nu["encoder"]
  jax.tree.map(np.testing.assert_array_equal, back, unstack_blocks(jax.tree.map(np.asarray, state)))
