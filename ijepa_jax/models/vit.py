"""Vision Transformer encoder (no CLS token) as used by I-JEPA.

Pre-norm transformer blocks, fixed 2-D sin-cos positional embedding, optional
token gathering (for the context encoder) before the blocks.

Precision follows the release's `torch.cuda.amp.autocast(dtype=bfloat16)` over fp32 parameters, with
`dtype` the autocast dtype (float32: everything fp32):
  * matmuls and the patch conv take `dtype` inputs and give `dtype` outputs (XLA accumulates bf16
    products in fp32 on GPU and TPU); attention logits are scaled in `dtype`, as `(q @ k^T) * scale`;
  * LayerNorm and softmax run in fp32 and return fp32 (CUDA autocast's float32 list);
  * GELU computes in fp32 and rounds to `dtype`, as torch's bf16 CUDA kernel does;
  * the residual stream is fp32: the positional embedding is added in fp32 and each block adds its
    `dtype` branch to an fp32 stream (fp32 + bf16 promotes to fp32), so the encoder's output (its
    final LayerNorm) is fp32.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name

from ijepa_jax.models.layout import STACKED_AXIS

Dtype = Any

LN_EPS = 1e-6
INIT_STD = 0.02

# name -> width (D), depth, num_heads, mlp_dim
VIT_SIZES: dict[str, dict[str, int]] = {
  "vit_tiny": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
  "vit_small": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
  "vit_base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
  "vit_large": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
  "vit_huge": dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),
  "vit_giant": dict(width=1408, depth=40, num_heads=16, mlp_dim=6144),
}


# --------------------------------------------------------------------------
# Initialisers (with logical axis names)
# --------------------------------------------------------------------------

def _normal(names):
  """Untruncated N(0, 0.02), annotated with logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=INIT_STD), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def layer_norm(name: str) -> nn.LayerNorm:
  """LayerNorm in fp32, whatever the compute dtype (autocast's float32 list). The variance is computed
  as torch does, mean((x - mean)^2), not flax's default E[x^2] - E[x]^2, which cancels catastrophically
  when |mean| >> std (as in the fp32 residual stream of deep blocks)."""
  return nn.LayerNorm(
    epsilon=LN_EPS,
    use_fast_variance=False,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    scale_init=_ones(("norm",)),
    bias_init=_zeros(("norm",)),
    name=name,
  )


def dense(features: int, kernel_names, bias_names, dtype: Dtype, name: str) -> "Linear":
  return Linear(features, kernel_names, bias_names, dtype, name=name)


def constrain(x: jax.Array, names=("act_batch", "act_length", "act_embed")) -> jax.Array:
  """Logical sharding constraint; a no-op when no axis rules are active."""
  return nn.with_logical_constraint(x, names)


# --------------------------------------------------------------------------
# Positional embedding
# --------------------------------------------------------------------------

def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """[len(pos), dim]: [sin(p*w_k)..., cos(p*w_k)...], w_k = 10000^(-k/(dim/2))."""
  half = dim // 2
  omega = 1.0 / 10000.0 ** (np.arange(half, dtype=np.float64) / half)
  angles = pos.astype(np.float64)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos positional embedding, float32 [grid_h*grid_w, dim].

  Tokens are row-major (n = row * grid_w + col). The first dim/2 channels
  encode the column index, the last dim/2 the row index (MAE convention).
  Computed in float64, returned as float32.
  """
  if dim % 4 != 0:
    raise ValueError(f"sincos_pos_embed_2d: dim must be a multiple of 4, got {dim}")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  emb_col = _sincos_1d(dim // 2, cols.reshape(-1))
  emb_row = _sincos_1d(dim // 2, rows.reshape(-1))
  return np.concatenate([emb_col, emb_row], axis=1).astype(np.float32)


# --------------------------------------------------------------------------
# Transformer block
# --------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rounded_once(equation: str, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """einsum(x, kernel) + bias, all in a low dtype: products and the bias added in fp32, rounded once.

  That is what torch's autocast Linear / conv do (one bf16 rounding of the fused output); a bf16 einsum
  followed by a bf16 bias add rounds twice and flips ~27% of the outputs' last bits. The backward pass is
  the plain low-dtype einsum's (low-dtype cotangents and matmuls, as torch's), not the mixed fp32 x bf16
  matmuls that differentiating the fp32-accumulated einsum would give.
  """
  y = jnp.einsum(equation, x, kernel, preferred_element_type=jnp.float32)
  return (y + bias.astype(jnp.float32)).astype(x.dtype)


def _rounded_once_fwd(equation, x, kernel, bias):
  return _rounded_once(equation, x, kernel, bias), (x, kernel, bias)


def _rounded_once_bwd(equation, residuals, g):
  x, kernel, bias = residuals
  _, matmul_vjp = jax.vjp(lambda x, k: jnp.einsum(equation, x, k), x, kernel)
  _, bias_vjp = jax.vjp(lambda b: jnp.broadcast_to(b.astype(jnp.float32), g.shape), bias)
  return (*matmul_vjp(g), *bias_vjp(g.astype(jnp.float32)))   # bias: summed in fp32, rounded once


_rounded_once.defvjp(_rounded_once_fwd, _rounded_once_bwd)


def matmul(equation: str, x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: Dtype) -> jax.Array:
  """einsum(equation, x, kernel) + bias in `dtype` as the release's autocast computes a Linear or conv:
  inputs and bias rounded to dtype, fp32 accumulation, the output rounded once (fp32: plain fp32)."""
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(equation, x.astype(jnp.float32), kernel) + bias
  # Named, because remat's "dots" policies see a custom_vjp as no dot (REMAT_POLICIES saves this name).
  return checkpoint_name(_rounded_once(equation, x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)),
                         "linear")


class Linear(nn.Module):
  """A Linear layer (and the patch conv) through `matmul`, with nn.Dense's parameters.

  'kernel' [in, out] and 'bias' [out] (or kernel_shape, e.g. the patch embedding's [p, p, C, D] as
  nn.Conv has it), so checkpoints and the release's weights map one-to-one. __call__'s einsum
  `equation`, with the kernel viewed as `kernel_view` and the bias as `bias_view`, says how axes
  factor ('qkv' output: [3][heads][head_dim], torch's q|k|v head-major; 'proj' input: [heads][head_dim]).
  """

  features: int
  kernel_names: tuple
  bias_names: tuple
  dtype: Dtype = jnp.float32
  kernel_shape: tuple | None = None   # default [x.shape[-1], features]

  @nn.compact
  def __call__(self, x: jax.Array, equation: str = "...i,io->...o", kernel_view: tuple | None = None,
               bias_view: tuple | None = None) -> jax.Array:
    shape = self.kernel_shape or (x.shape[-1], self.features)
    kernel = self.param("kernel", _normal(self.kernel_names), shape, jnp.float32)
    bias = self.param("bias", _zeros(self.bias_names), (self.features,), jnp.float32)
    kernel = kernel if kernel_view is None else kernel.reshape(kernel_view)
    bias = bias if bias_view is None else bias.reshape(bias_view)
    return matmul(equation, x, kernel, bias, self.dtype)


ATTENTION = ("xla", "cudnn")   # model.attention
_said = set()


def _say_once(message: str) -> None:
  if message not in _said:
    _said.add(message)
    logging.warning(message)


class Attention(nn.Module):
  """Multi-head self-attention. attention='xla': explicit einsums (below); 'cudnn': the fused kernel of
  jax.nn.dot_product_attention on NVIDIA GPUs (bf16/fp16 only), its XLA implementation elsewhere."""

  width: int
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """valid: bool [B, T], the tokens that may be attended to (padding is not); None: all."""
    b, t, d = x.shape
    h, hd = self.num_heads, self.width // self.num_heads
    keys = None if valid is None else valid[:, None, None, :]   # [B, 1, 1, T]: over heads and queries
    qkv = Linear(3 * self.width, ("embed", "qkv"), ("qkv",), self.dtype, (d, 3 * self.width), name="qkv")
    proj = Linear(self.width, ("heads", "embed"), ("embed",), self.dtype, (self.width, self.width), name="proj")
    if self.attention == "cudnn":
      q, k, v = qkv(x, "btd,dshk->sbthk", (d, 3, h, hd), (3, 1, 1, h, hd))   # [B, T, H, hd] each
      implementation = "cudnn" if jax.default_backend() == "gpu" else "xla"
      if implementation != "cudnn":
        _say_once(f"model.attention=cudnn: no GPU (backend {jax.default_backend()!r}); using "
                  "jax.nn.dot_product_attention's XLA implementation")
      out = jax.nn.dot_product_attention(q, k, v, scale=hd ** -0.5, mask=keys, implementation=implementation)
      return proj(out, "bthk,hkd->btd", (h, hd, self.width), (self.width,))
    # Heads-major layouts straight out of the projections ([3, B, H, T, hd] and back from [B, H, T, hd]):
    # on CPU this is ~30% faster fwd + bwd than [B, T, H, hd] through jax.nn.dot_product_attention,
    # whose einsums make XLA transpose every activation and its gradient.
    q, k, v = qkv(x, "btd,dshk->sbhtk", (d, 3, h, hd), (3, 1, h, 1, hd))
    # The release: (q @ k^T) * scale, the product rounded to the matmul's dtype, the fp32 scale applied
    # and rounded again (torch multiplies by a Python float in fp32: the scale itself is not rounded to
    # bf16, which would shift every logit by up to 2^-9 for head_dim 80); then softmax in fp32.
    logits = (jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * hd ** -0.5).astype(q.dtype)
    logits = logits.astype(jnp.float32)
    if keys is not None:   # padding gets exactly zero weight: exp(-inf) = 0 (every row has real keys)
      logits = jnp.where(keys, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
    return proj(out, "bhtk,hkd->btd", (h, hd, self.width), (self.width,))


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU in torch's form, x/2 (1 + erf(x/sqrt 2)), as the release's nn.GELU computes it.

  jax.nn.gelu(approximate=False) uses erfc, which XLA expands into a piecewise polynomial that costs
  about 1.4x as much on CPU, fwd + bwd; the two agree to ~1e-6 absolute in float32.
  Computed in fp32 and returned in x's dtype (torch's bf16 kernels compute in fp32 and round once).
  """
  y = x.astype(jnp.float32)
  return (0.5 * y * (1.0 + jax.lax.erf(y * 2 ** -0.5))).astype(x.dtype)


class Mlp(nn.Module):
  width: int
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = dense(self.mlp_dim, ("embed", "mlp"), ("mlp",), self.dtype, "fc1")(x)
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    h = gelu(h)
    return dense(self.width, ("mlp", "embed"), ("embed",), self.dtype, "fc2")(h)


class Block(nn.Module):
  """Pre-norm transformer block: x += Attn(LN1(x)); x += MLP(LN2(x)). The stream x is fp32; the
  branches compute in `dtype` and are added to it in fp32."""

  width: int
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  attention: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    y = layer_norm("norm1")(x)
    x = x + Attention(self.width, self.num_heads, self.dtype, self.attention, name="attn")(y, valid)
    y = layer_norm("norm2")(x)
    x = x + Mlp(self.width, self.mlp_dim, self.dtype, name="mlp")(y)
    return constrain(x)


# model.remat: which activations of a block are kept for the backward pass; the others are recomputed.
_policies = jax.checkpoint_policies
_linear = _policies.save_only_these_names("linear")   # bf16 Linear outputs (see matmul)
REMAT_POLICIES = {
    "none": None,                                                  # keep everything (fastest)
    "full": _policies.nothing_saveable,                            # keep only each block's input
    "dots": _policies.save_from_both_policies(_policies.dots_saveable, _linear),  # keep matmul outputs
    "dots_no_batch": _policies.save_from_both_policies(           # ... except attention's
        _policies.dots_with_no_batch_dims_saveable, _linear),
}


def block_class(remat: str, scan: bool = False):
  if remat == "none":
    return Block
  # Under a scan the loop boundary already keeps XLA from merging the recomputation back into the forward
  # pass, so remat's CSE barriers would only cost speed (jax.checkpoint's advice for scans).
  return nn.remat(Block, policy=REMAT_POLICIES[remat], prevent_cse=not scan)


def run_blocks(x: jax.Array, depth: int, remat: str, scan: bool, collect: int = 0,
               valid: jax.Array | None = None, **block):
  """`depth` Blocks over x, inside a parent's compact method: (x, each block's output or None).
  valid: bool [B, T], the tokens attention may read (None: all).

  scan=False: unrolled modules blocks_0 .. blocks_{depth-1} (the release's and old checkpoints' layout).
  scan=True: one nn.scan over a module 'blocks' whose parameters are stacked on a leading axis of size
  depth, logically named 'layers'; XLA compiles one block instead of depth of them. The remat policy
  applies to the block inside the scan. collect: also return the last `collect` blocks' outputs (under
  scan a buffer of that many outputs in the loop's carry, so keeping 4 of 32 never holds the other 28).
  """
  cls = block_class(remat, scan)
  collect = min(max(int(collect), 0), depth)
  if not scan:
    outs = []
    for i in range(depth):
      x = cls(**block, name=f"blocks_{i}")(x, valid)
      if i >= depth - collect:
        outs.append(x)
    return x, (outs if collect else None)

  first = depth - collect  # block `first` is the first kept; earlier blocks write slot 0, which it overwrites

  def body(module, carry, valid, i):
    x, kept = carry
    x = module(x, valid)
    if kept is not None:
      kept = jax.lax.dynamic_update_index_in_dim(kept, x.astype(kept.dtype), jnp.maximum(i - first, 0), 0)
    return (x, kept), None

  layers = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True}, length=depth,
                   in_axes=(nn.broadcast, 0), metadata_params={nn.PARTITION_NAME: STACKED_AXIS})
  kept = jnp.zeros((collect, *x.shape), jnp.float32) if collect else None
  (x, kept), _ = layers(cls(**block, name="blocks"), (x, kept), valid, jnp.arange(depth))
  return x, ([kept[i] for i in range(collect)] if collect else None)


def check_heads(width: int, num_heads: int, what: str) -> None:
  if num_heads <= 0 or width % num_heads != 0:
    raise ValueError(f"{what}: width {width} is not divisible by num_heads {num_heads}")


# --------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------

class VisionTransformer(nn.Module):
  """ViT encoder without CLS token.

  __call__(images [B, H, W, C], token_idx int32 [B, K] | None, token_count int32 [B] | None) -> [B, K or N, D]
  token_count: only the first token_count[b] of row b's K tokens are real (the rest padding, which no
  token attends to; their outputs are meaningless).
  With the 'intermediates' collection mutable, the last `keep_blocks` blocks' outputs (None: all; before the
  final norm, fp32) are sown as 'block_{i}' (with or without scan_layers). The output is fp32 (the final
  LayerNorm's).
  """

  image_size: int
  patch_size: int
  channels: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  remat: str = "none"  # a REMAT_POLICIES key
  attention: str = "xla"  # an ATTENTION value
  scan_layers: bool = False  # see run_blocks: parameters under 'blocks' [depth, ...] instead of blocks_{i}

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid

  @nn.compact
  def __call__(self, images: jax.Array, token_idx: jax.Array | None = None,
               token_count: jax.Array | None = None, keep_blocks: int | None = None) -> jax.Array:
    if self.image_size % self.patch_size != 0:
      raise ValueError(
        f"VisionTransformer: image_size {self.image_size} is not divisible by "
        f"patch_size {self.patch_size}"
      )
    check_heads(self.width, self.num_heads, "VisionTransformer")
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, self.channels):
      raise ValueError(
        "VisionTransformer: expected images of shape [B, "
        f"{self.image_size}, {self.image_size}, {self.channels}], got {images.shape}"
      )
    p = self.patch_size
    # The conv with kernel = stride = p, as an einsum over non-overlapping p x p patches (nn.Conv's kernel).
    patches = einops.rearrange(images, "b (h p) (w q) c -> b h p w q c", p=p, q=p)
    x = Linear(self.width, ("patch_h", "patch_w", "channels", "embed"), ("embed",), self.dtype,
               kernel_shape=(p, p, self.channels, self.width), name="patch_embed")(patches, "bhpwqc,pqcd->bhwd")
    x = einops.rearrange(x, "b h w d -> b (h w) d")  # row-major tokens
    pos = sincos_pos_embed_2d(self.width, self.grid, self.grid)
    x = x + jnp.asarray(pos, jnp.float32)[None]  # fp32: the release adds its fp32 pos_embed to the bf16 conv
    if token_idx is not None:
      x = jnp.take_along_axis(x, token_idx[..., None].astype(jnp.int32), axis=1)
    x = constrain(x)

    collect = (self.depth if keep_blocks is None else keep_blocks) if self.is_mutable_collection("intermediates") else 0
    valid = None if token_count is None else jnp.arange(x.shape[1]) < token_count[:, None]
    x, outs = run_blocks(x, self.depth, self.remat, self.scan_layers, collect, valid, width=self.width,
                         num_heads=self.num_heads, mlp_dim=self.mlp_dim, dtype=self.dtype, attention=self.attention)
    for i, out in enumerate(outs or (), start=self.depth - len(outs or ())):  # the same names in both layouts
      self.sow("intermediates", f"block_{i}", out)
    return layer_norm("norm")(x)
