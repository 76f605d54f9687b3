"""Tests for ijepa_jax.models (encoder, predictor, positional embedding, factory)."""

import functools
import math

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from ijepa_jax.defaults import base_config
from ijepa_jax.errors import ConfigError
from ijepa_jax.models import (
  VIT_SIZES,
  Predictor,
  VisionTransformer,
  make_models,
  sincos_pos_embed_2d,
)

IMG, PATCH, C, D = 16, 4, 3, 32
GRID = IMG // PATCH
N = GRID * GRID


def model_config(**overrides) -> ConfigDict:
  """defaults.py's `model` with these keys changed (any type: remat=True is an older config's form)."""
  return ConfigDict({**base_config().model.to_dict(), **overrides})


def _encoder(**kw):
  cfg = dict(image_size=IMG, patch_size=PATCH, channels=C, width=D, depth=2, num_heads=4, mlp_dim=64)
  cfg.update(kw)
  return VisionTransformer(**cfg)


def _init(model, key, *args):
  """Jitted init: much faster on CPU than eager per-op init."""
  return jax.jit(model.init)(jax.random.key(key), *args)


def _apply(model, variables, *args, **kwargs):
  """Jitted apply (one compile instead of many eager per-op compiles)."""
  return jax.jit(model.apply)(variables, *args, **kwargs)


def _predictor(**kw):
  cfg = dict(grid=GRID, embed_width=D, width=16, depth=1, num_heads=2)
  cfg.update(kw)
  return Predictor(**cfg)


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.key(0), (2, IMG, IMG, C), jnp.float32)


@pytest.fixture(scope="module")
def enc_and_vars(images):
  enc = _encoder()
  return enc, _init(enc, 1, images)


@pytest.fixture(scope="module")
def pred_and_vars():
  pred = _predictor()
  ctx = jax.random.normal(jax.random.key(2), (2, 5, D))
  cidx = jnp.tile(jnp.arange(5, dtype=jnp.int32)[None], (2, 1))
  tidx = jnp.tile(jnp.arange(6, 12, dtype=jnp.int32).reshape(1, 2, 3), (2, 1, 1))
  return pred, _init(pred, 3, ctx, cidx, tidx), (ctx, cidx, tidx)


# ---------------------------------------------------------------- pos embed

def test_pos_embed_values():
  pe = sincos_pos_embed_2d(8, 3, 4)
  assert pe.shape == (12, 8) and pe.dtype == np.float32
  w = np.array([1.0, 1.0 / 100.0])
  # (row=0, col=1) -> n = 1
  np.testing.assert_allclose(pe[1, :4], np.concatenate([np.sin(w), np.cos(w)]), rtol=1e-6)
  np.testing.assert_allclose(pe[1, 4:], [0, 0, 1, 1], atol=1e-7)
  # (row=2, col=3) -> n = 2*4 + 3 = 11
  np.testing.assert_allclose(pe[11, :4], np.concatenate([np.sin(3 * w), np.cos(3 * w)]), rtol=1e-6)
  np.testing.assert_allclose(pe[11, 4:], np.concatenate([np.sin(2 * w), np.cos(2 * w)]), rtol=1e-6)
  # origin
  np.testing.assert_allclose(pe[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)


def test_pos_embed_bad_dim():
  with pytest.raises(ValueError):
    sincos_pos_embed_2d(6, 2, 2)


def test_pos_embed_not_a_param(enc_and_vars, pred_and_vars):
  for _, v, *_ in (enc_and_vars, pred_and_vars):
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(nn.unbox(v))]
    assert not any("pos" in n for n in names)


# ---------------------------------------------------------------- shapes

def test_encoder_shapes(enc_and_vars, images):
  enc, v = enc_and_vars
  assert enc.grid == GRID
  assert _apply(enc, v, images).shape == (2, N, D)
  idx = jnp.array([[0, 3, 7], [1, 2, 15]], jnp.int32)
  assert _apply(enc, v, images, token_idx=idx).shape == (2, 3, D)


def test_encoder_intermediates(enc_and_vars, images):
  enc, v = enc_and_vars
  out, state = jax.jit(functools.partial(enc.apply, mutable=["intermediates"]))(v, images)
  inter = state["intermediates"]
  assert set(inter) == {"block_0", "block_1"}
  assert inter["block_1"][0].shape == (2, N, D)
  # final norm applied after the last sown block output
  np.testing.assert_allclose(
    out, nn.LayerNorm(epsilon=1e-6).apply({"params": nn.unbox(v["params"])["norm"]}, inter["block_1"][0]),
    rtol=1e-5, atol=1e-5,
  )


def test_last_blocks_under_scan_keep_only_those(images):
  """keep_blocks=k sows the last k blocks' outputs, the same in both layouts; under scan the loop carries k
  outputs, so the compiled program's memory does not hold the other depth - k (it did: a stacked scan output)."""
  from ijepa_jax.models import layout
  depth, k = 6, 2
  unrolled, scanned = _encoder(depth=depth), _encoder(depth=depth, scan_layers=True)
  v = nn.unbox(_init(unrolled, 0, images))
  vs = {"params": layout.stack_blocks(v["params"])}

  def last(model, variables, keep):
    return jax.jit(functools.partial(model.apply, keep_blocks=keep, mutable=["intermediates"]))(variables, images)

  (out_u, inter_u), (out_s, inter_s) = last(unrolled, v, k), last(scanned, vs, k)
  assert set(inter_u["intermediates"]) == set(inter_s["intermediates"]) == {"block_4", "block_5"}
  for name in ("block_4", "block_5"):
    np.testing.assert_allclose(inter_s["intermediates"][name][0], inter_u["intermediates"][name][0], atol=1e-5)
  np.testing.assert_allclose(out_s, out_u, atol=1e-5)
  batch = jnp.zeros((64, IMG, IMG, C))

  def temp(keep):
    f = jax.jit(functools.partial(scanned.apply, keep_blocks=keep, mutable=["intermediates"]))
    return f.lower(vs, batch).compile().memory_analysis().temp_size_in_bytes

  one_output = 64 * N * D * 4
  assert temp(depth) - temp(k) >= (depth - k - 1) * one_output


def test_encoder_bad_patch():
  enc = _encoder(image_size=18)
  with pytest.raises(ValueError, match="divisible"):
    _init(enc, 0, jnp.zeros((1, 18, 18, C)))


def test_predictor_shapes(pred_and_vars):
  pred, v, (ctx, cidx, tidx) = pred_and_vars
  assert _apply(pred, v, ctx, cidx, tidx).shape == (2, 2, 3, D)


def _np_ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_block(x, p, heads):
  from math import erf

  b, t, d = x.shape
  hd = d // heads
  y = _np_ln(x, p["norm1"])
  qkv = (y @ p["attn"]["qkv"]["kernel"] + p["attn"]["qkv"]["bias"]).reshape(b, t, 3, heads, hd)
  q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, H, T, hd]
  logits = q @ k.transpose(0, 1, 3, 2) * hd ** -0.5
  att = np.exp(logits - logits.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  o = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
  x = x + o @ p["attn"]["proj"]["kernel"] + p["attn"]["proj"]["bias"]
  y = _np_ln(x, p["norm2"])
  h = y @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
  h = 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))
  return x + h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]


def test_encoder_matches_numpy_reference(enc_and_vars, images):
  """Independent float64 numpy forward: row-major patches, qkv layout, exact GELU, eps."""
  enc, v = enc_and_vars
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), nn.unbox(v)["params"])
  x = np.asarray(images, np.float64)
  b = x.shape[0]
  patches = x.reshape(b, GRID, PATCH, GRID, PATCH, C).transpose(0, 1, 3, 2, 4, 5).reshape(b, N, -1)
  t = patches @ p["patch_embed"]["kernel"].reshape(-1, D) + p["patch_embed"]["bias"]
  t = t + sincos_pos_embed_2d(D, GRID, GRID)
  for i in range(enc.depth):
    t = _np_block(t, p[f"blocks_{i}"], enc.num_heads)
  ref = _np_ln(t, p["norm"])
  np.testing.assert_allclose(_apply(enc, v, images), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- gathering

def test_gather_identity_exact(enc_and_vars, images):
  enc, v = enc_and_vars
  idx = jnp.tile(jnp.arange(N, dtype=jnp.int32)[None], (2, 1))
  # Eager: the same op sequence runs, so the result is bit-identical.
  full = enc.apply(v, images)
  np.testing.assert_array_equal(np.asarray(enc.apply(v, images, token_idx=idx)), np.asarray(full))
  # Jitted: separately compiled programs may fuse differently (ulp-level differences).
  np.testing.assert_allclose(_apply(enc, v, images, token_idx=idx), _apply(enc, v, images), rtol=1e-6, atol=1e-6)


def test_gather_permutation_equivariance(enc_and_vars, images):
  enc, v = enc_and_vars
  idx = jnp.array([[0, 5, 9, 14, 3], [2, 4, 6, 8, 10]], jnp.int32)
  perm = jnp.array([3, 0, 4, 1, 2])
  out = _apply(enc, v, images, token_idx=idx)
  out_p = _apply(enc, v, images, token_idx=idx[:, perm])
  np.testing.assert_allclose(out_p, out[:, perm], rtol=1e-5, atol=1e-5)
  # positional embedding is added before gathering: same token set at other
  # positions gives different features
  out_other = _apply(enc, v, images, token_idx=idx + 1)
  assert not np.allclose(out_other, out, atol=1e-3)


# ---------------------------------------------------------------- predictor

def test_target_blocks_independent(pred_and_vars):
  pred, v, (ctx, cidx, tidx) = pred_and_vars
  out = _apply(pred, v, ctx, cidx, tidx)
  tidx2 = tidx.at[:, 1].set(jnp.array([13, 14, 15], jnp.int32))
  out2 = _apply(pred, v, ctx, cidx, tidx2)
  np.testing.assert_allclose(out2[:, 0], out[:, 0], rtol=1e-6, atol=1e-6)
  assert not np.allclose(out2[:, 1], out[:, 1], atol=1e-4)


def test_predictor_equals_single_block_run(pred_and_vars):
  # Running each target block on its own gives the same result as the batched call.
  pred, v, (ctx, cidx, tidx) = pred_and_vars
  out = _apply(pred, v, ctx, cidx, tidx)
  for m in range(tidx.shape[1]):
    single = _apply(pred, v, ctx, cidx, tidx[:, m : m + 1])
    np.testing.assert_allclose(single[:, 0], out[:, m], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- init

def test_init_statistics():
  enc = VisionTransformer(image_size=8, patch_size=8, channels=1, width=256, depth=1, num_heads=4, mlp_dim=1024)
  v = nn.unbox(_init(enc, 7, jnp.zeros((1, 8, 8, 1))))["params"]
  k = np.asarray(v["blocks_0"]["mlp"]["fc1"]["kernel"])
  assert k.shape == (256, 1024)
  assert abs(k.std() - 0.02) < 0.05 * 0.02
  assert abs(k.mean()) < 1e-3
  assert np.abs(k).max() > 2.5 * 0.02  # not truncated at 2 sigma
  b = v["blocks_0"]
  for name in ("qkv", "proj"):
    np.testing.assert_array_equal(b["attn"][name]["bias"], 0)
  for name in ("fc1", "fc2"):
    np.testing.assert_array_equal(b["mlp"][name]["bias"], 0)
  for ln in (b["norm1"], b["norm2"], v["norm"]):
    np.testing.assert_array_equal(ln["scale"], 1)
    np.testing.assert_array_equal(ln["bias"], 0)
  np.testing.assert_array_equal(v["patch_embed"]["bias"], 0)
  assert abs(np.asarray(v["patch_embed"]["kernel"]).std() - 0.02) < 0.1 * 0.02


def test_mask_token_init(pred_and_vars):
  _, v, _ = pred_and_vars
  mt = np.asarray(nn.unbox(v)["params"]["mask_token"])
  assert mt.shape == (1, 1, 16)
  assert 0 < np.abs(mt).max() < 0.2


# ---------------------------------------------------------------- metadata

def test_logical_axis_names(enc_and_vars, pred_and_vars):
  _, ev = enc_and_vars
  _, pv, _ = pred_and_vars
  es = nn.get_partition_spec(ev)["params"]
  ps = nn.get_partition_spec(pv)["params"]
  b = es["blocks_0"]
  assert tuple(b["attn"]["qkv"]["kernel"]) == ("embed", "qkv")
  assert tuple(b["attn"]["qkv"]["bias"]) == ("qkv",)
  assert tuple(b["attn"]["proj"]["kernel"]) == ("heads", "embed")
  assert tuple(b["attn"]["proj"]["bias"]) == ("embed",)
  assert tuple(b["mlp"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(b["mlp"]["fc1"]["bias"]) == ("mlp",)
  assert tuple(b["mlp"]["fc2"]["kernel"]) == ("mlp", "embed")
  assert tuple(b["mlp"]["fc2"]["bias"]) == ("embed",)
  assert tuple(b["norm1"]["scale"]) == ("norm",)
  assert tuple(es["norm"]["bias"]) == ("norm",)
  assert tuple(es["patch_embed"]["kernel"]) == ("patch_h", "patch_w", "channels", "embed")
  assert tuple(es["patch_embed"]["bias"]) == ("embed",)
  assert tuple(ps["predictor_embed"]["kernel"]) == ("embed_in", "embed")
  assert tuple(ps["predictor_embed"]["bias"]) == ("embed",)
  assert tuple(ps["predictor_proj"]["kernel"]) == ("embed", "embed_out")
  assert tuple(ps["predictor_proj"]["bias"]) == ("embed_out",)
  assert tuple(ps["mask_token"]) == (None, None, "embed")
  assert tuple(ps["predictor_norm"]["scale"]) == ("norm",)
  # every leaf is boxed
  leaves = jax.tree_util.tree_leaves(pv, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)
  assert set(pv["params"]) == {"predictor_embed", "mask_token", "blocks_0", "predictor_norm", "predictor_proj"}
  assert set(ev["params"]) == {"patch_embed", "blocks_0", "blocks_1", "norm"}


# ---------------------------------------------------------------- dtype / remat

def _dots(jaxpr):
  """Every dot_general in a jaxpr (through pjit, custom_vjp and remat sub-jaxprs): operand dtypes."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out += _dots(sub)
  return out


def test_bf16_is_the_release_autocast(enc_and_vars, pred_and_vars, images):
  """dtype=bfloat16: fp32 params; bf16 matmuls in the forward and the backward (never fp32 x bf16); an fp32
  residual stream, so the encoder's output and its sown block outputs are fp32; the predictor's output is
  its bf16 projection. (The numbers against torch's autocast: tests/test_convert.py, experiments/.)"""
  _, v = enc_and_vars
  enc = _encoder(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(enc.init, jax.random.key(0), images)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(shapes)))
  out, inter = jax.jit(functools.partial(enc.apply, mutable=["intermediates"]))(v, images)
  assert out.dtype == jnp.float32 and out.shape == (2, N, D)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(inter))
  np.testing.assert_allclose(out, _apply(_encoder(), v, images), atol=0.05)   # bf16 error on unit-scale outputs
  pred = _predictor(dtype=jnp.bfloat16)
  _, pv, (ctx, cidx, tidx) = pred_and_vars
  pout = _apply(pred, pv, out[:, :5], cidx, tidx)
  assert pout.dtype == jnp.bfloat16 and pout.shape == (2, 2, 3, D)

  def loss(params, pparams):
    z = enc.apply(params, images, cidx)
    return jnp.sum(jnp.square(pred.apply(pparams, z, cidx, tidx).astype(jnp.float32)))

  dots = _dots(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(v, pv).jaxpr)
  # fwd: patch embed + 2 blocks x 4 in the encoder, 2 Linears + 1 block x 4 in the predictor, then 3x that in bwd
  assert len(dots) >= 3 * (1 + 2 * 4 + 2 + 4)
  assert set(dots) == {("bfloat16", "bfloat16")}, sorted(set(dots))


def test_bf16_linear_rounds_once_like_torch():
  """matmul in bf16: the product accumulated in fp32 plus the bias, rounded to bf16 once (what torch's
  autocast Linear returns); a bf16 product plus a bf16 bias would round twice."""
  from ijepa_jax.models.vit import matmul
  rng = np.random.default_rng(0)
  x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((64, 48), (48, 40), (40,)))
  r = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
  exact = r(r(x) @ r(w) + r(b))          # fp64 of the bf16 inputs, one rounding
  ours = np.asarray(jax.jit(lambda *a: matmul("ti,io->to", *a, jnp.bfloat16))(x, w, b).astype(jnp.float32))
  assert np.mean(ours == exact) > 0.999
  twice = r(r(r(x) @ r(w)) + r(b))
  assert np.mean(twice == exact) < 0.9     # the check can tell the two apart
  g = jax.grad(lambda x, w, b: jnp.sum(matmul("ti,io->to", x, w, b, jnp.bfloat16).astype(jnp.float32) ** 2),
               argnums=(0, 1, 2))(x, w, b)
  ref = jax.grad(lambda x, w, b: jnp.sum((x @ w + b) ** 2), argnums=(0, 1, 2))(x, w, b)
  for a, e in zip(g, ref):
    assert a.dtype == jnp.float32 and np.linalg.norm(a - e) / np.linalg.norm(e) < 1e-2


@pytest.mark.parametrize("policy", ["dots", "dots_no_batch"])
def test_bf16_remat_dots_keep_the_linear_outputs(images, policy):
  """The bf16 Linears are custom_vjp calls, invisible to the dots policies: they are saved by name, so a
  policy keeps the same Linear outputs in bf16 as it keeps dot outputs in fp32."""
  from jax.ad_checkpoint import print_saved_residuals
  import contextlib, io

  def saved(dtype):
    enc = _encoder(dtype=dtype, remat=policy, depth=1)
    v = _init(enc, 1, images)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
      print_saved_residuals(lambda p: enc.apply(p, images).sum(), v)
    return buf.getvalue()

  fp32_linears = saved(jnp.float32).count("output of dot_general from") - (2 if policy == "dots" else 0)  # attention's
  assert fp32_linears >= 2 and saved(jnp.bfloat16).count("named 'linear'") == fp32_linears


def test_attention_cudnn_path_equals_the_einsums(images, caplog):
  """model.attention=cudnn goes through jax.nn.dot_product_attention (its XLA implementation off GPU, said
  once): same outputs and gradients as the einsum path within bf16 error."""
  import logging
  from ijepa_jax.models import vit
  ref, fused = _encoder(dtype=jnp.bfloat16, depth=1), _encoder(dtype=jnp.bfloat16, depth=1, attention="cudnn")
  v = _init(ref, 1, images)
  vit._said.clear()
  with caplog.at_level(logging.WARNING):
    a, b = _apply(ref, v, images), _apply(fused, v, images)
    _apply(fused, v, images[:1])                       # a second trace says nothing more
  if jax.default_backend() != "gpu":
    assert sum("model.attention=cudnn: no GPU" in r.message for r in caplog.records) == 1
  assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2
  loss = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply(p, images) ** 2)))
  for x, y in zip(jax.tree_util.tree_leaves(nn.unbox(loss(ref)(v))), jax.tree_util.tree_leaves(nn.unbox(loss(fused)(v)))):
    assert np.linalg.norm(x - y) <= 3e-2 * np.linalg.norm(x) + 1e-6


def test_attention_setting_is_checked():
  base = dict(name="vit_tiny", patch_size=4, width=32, depth=1, num_heads=4)
  enc, pred = make_models(model_config(**base, attention="cudnn"), 16, 3, jnp.bfloat16)
  assert enc.attention == pred.attention == "cudnn"
  with pytest.raises(ConfigError, match="model.attention='flash' is not one of"):
    make_models(model_config(**base, attention="flash"), 16, 3, jnp.bfloat16)
  with pytest.raises(ConfigError, match="needs --config.dtype=bfloat16"):
    make_models(model_config(**base, attention="cudnn"), 16, 3, jnp.float32)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_same_output_and_grads(enc_and_vars, images, policy):
  enc, v = enc_and_vars
  enc_r = _encoder(remat=policy)
  np.testing.assert_allclose(_apply(enc_r, v, images), _apply(enc, v, images), rtol=1e-6, atol=1e-6)
  loss = lambda m: (lambda p: jnp.sum(m.apply(p, images) ** 2))
  g = jax.jit(jax.grad(loss(enc)))(v)
  g_r = jax.jit(jax.grad(loss(enc_r)))(v)
  for a, b in zip(jax.tree_util.tree_leaves(nn.unbox(g)), jax.tree_util.tree_leaves(nn.unbox(g_r))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- sizes / factory

def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(tree)))


def test_vit_huge_param_count():
  enc, pred = make_models(model_config(name="vit_huge", patch_size=14), 224, 3, jnp.float32)
  shapes = jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  # ViT-H/14 encoder: 630,434,560 params (the release also stores its fixed
  # pos_embed [1, 256, 1280] as a non-trained parameter: +327,680).
  assert _count(shapes) == 630_434_560
  pshapes = jax.eval_shape(
    pred.init, jax.random.key(0), jnp.zeros((1, 10, 1280)),
    jnp.zeros((1, 10), jnp.int32), jnp.zeros((1, 4, 20), jnp.int32),
  )
  # predictor (width 384, depth 12, 16 heads, out 1280): 22,279,424 params
  assert _count(pshapes) == 22_279_424


def test_vit_sizes_table():
  assert VIT_SIZES["vit_huge"] == dict(width=1280, depth=32, num_heads=16, mlp_dim=5120)
  assert VIT_SIZES["vit_giant"] == dict(width=1408, depth=40, num_heads=16, mlp_dim=6144)
  assert VIT_SIZES["vit_tiny"]["num_heads"] == 3


def test_make_models_overrides():
  cfg = model_config(name="vit_tiny", patch_size=4, width=32, depth=1, num_heads=4, mlp_dim=-1,
                     predictor_width=16, predictor_depth=1, predictor_heads=-1, remat=True)
  enc, pred = make_models(cfg, 16, 3, jnp.bfloat16)
  assert (enc.width, enc.depth, enc.num_heads, enc.mlp_dim, enc.remat) == (32, 1, 4, 768, "full")  # old bool form
  assert pred.remat == "full"
  assert enc.dtype == jnp.bfloat16 and enc.grid == 4
  assert (pred.grid, pred.embed_width, pred.width, pred.depth, pred.num_heads) == (4, 32, 16, 1, 4)


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(name="vit_enormous"), "vit_huge"),
    (dict(width=100, num_heads=16), "num_heads"),
    (dict(width=18, num_heads=3), "multiple of 4"),
    (dict(predictor_width=100, predictor_heads=16), "predictor_heads"),
    (dict(patch_size=15), "patch_size"),
  ],
)
def test_make_models_errors(overrides, match):
  cfg = dict(name="vit_small", patch_size=16)
  cfg.update(overrides)
  with pytest.raises(ValueError, match=match):
    make_models(model_config(**cfg), 224, 3, jnp.float32)


def test_remat_policy_names():
  base = dict(name="vit_tiny", patch_size=4, width=32, depth=1, num_heads=4)
  for given, policy in [("dots", "dots"), (False, "none"), ("none", "none"), ("True", "full")]:
    enc, pred = make_models(model_config(**base, remat=given), 16, 3, jnp.float32)
    assert enc.remat == pred.remat == policy
  with pytest.raises(ConfigError, match="model.remat='everything' is not one of"):
    make_models(model_config(**base, remat="everything"), 16, 3, jnp.float32)


def test_layer_norm_variance_is_the_direct_form():
  """torch's LayerNorm computes mean((x - mean)^2); flax's fast form E[x^2] - E[x]^2 loses the variance
  to cancellation when the mean dwarfs the spread. On such a row ours stays at fp32 rounding error of
  the float64 result, where the fast form is off by orders of magnitude more."""
  from ijepa_jax.models.vit import LN_EPS, layer_norm
  rng = np.random.default_rng(0)
  x = (300.0 + 0.05 * rng.standard_normal((4, 1280))).astype(np.float32)
  x64 = x.astype(np.float64)
  ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + LN_EPS)
  ln = layer_norm("norm")
  params = ln.init(jax.random.PRNGKey(0), x)
  ours = np.asarray(ln.apply(params, x))
  fast = np.asarray(nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=True).apply(params, x))
  assert np.abs(ours - ref).max() < 2e-3
  assert np.abs(fast - ref).max() > 30 * np.abs(ours - ref).max()


# ============================================================================ padding (mask.counts='release')
@pytest.mark.parametrize("scan, attention", [(False, "xla"), (True, "xla"), (False, "cudnn")])
def test_padding_changes_nothing_and_never_leaks(images, scan, attention):
  """Real tokens' outputs with padding appended (and counts given) equal the unpadded ones, and no value
  at a padded position (its index, hence its pixels) reaches a real output."""
  enc, pred = _encoder(scan_layers=scan, attention=attention), _predictor(scan_layers=scan, attention=attention)
  b, kc, kt, m = images.shape[0], 7, 3, 2
  rng = np.random.default_rng(0)
  ctx = np.stack([np.sort(rng.choice(N, kc, replace=False)) for _ in range(b)]).astype(np.int32)
  tgt = rng.integers(0, N, (b, m, kt)).astype(np.int32)
  ev = _init(enc, 0, images, ctx)
  z = _apply(enc, ev, images, ctx)
  pv = _init(pred, 1, z, ctx, tgt)
  p = _apply(pred, pv, z, ctx, tgt)
  counts_c, counts_t = np.full(b, kc, np.int32), np.full(b, kt, np.int32)
  # nothing padded: the masked path is the unmasked one
  np.testing.assert_allclose(_apply(enc, ev, images, ctx, counts_c), z, atol=1e-6, rtol=0)
  np.testing.assert_allclose(_apply(pred, pv, z, ctx, tgt, counts_c, counts_t), p, atol=1e-6, rtol=0)
  for pad_seed in (1, 2):   # two different paddings: identical real outputs
    r = np.random.default_rng(pad_seed)
    ctx_p = np.concatenate([ctx, r.integers(0, N, (b, 5)).astype(np.int32)], 1)
    tgt_p = np.concatenate([tgt, r.integers(0, N, (b, m, 4)).astype(np.int32)], 2)
    zp = _apply(enc, ev, images, ctx_p, counts_c)
    np.testing.assert_allclose(zp[:, :kc], z, atol=2e-6, rtol=0)
    zp = zp.at[:, kc:].set(1e3 * pad_seed)             # whatever sits at padded context positions
    pp = _apply(pred, pv, zp, ctx_p, tgt_p, counts_c, counts_t)
    np.testing.assert_allclose(pp[:, :, :kt], p, atol=2e-6, rtol=0)
