"""Vision Transformer encoder (no CLS token) as used by I-JEPA.

Pre-norm transformer blocks, fixed 2-D sin-cos positional embedding, optional
token gathering (for the context encoder) before the blocks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

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


def layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=LN_EPS,
    dtype=dtype,
    param_dtype=jnp.float32,
    scale_init=_ones(("norm",)),
    bias_init=_zeros(("norm",)),
    name=name,
  )


def dense(features: int, kernel_names, bias_names, dtype: Dtype, name: str) -> nn.Dense:
  return nn.Dense(
    features,
    use_bias=True,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_normal(kernel_names),
    bias_init=_zeros(bias_names),
    name=name,
  )


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

class _HeadsProjection(nn.Module):
  """A Dense layer applied with its head axes split out of the kernel.

  Same parameters as nn.Dense ('kernel' [in, out], 'bias' [out]), so checkpoints and the release's
  weights map one-to-one; the einsum `equation` with `kernel_shape` says how an axis factors ('qkv'
  output: [3][heads][head_dim], torch's q|k|v head-major; 'proj' input: [heads][head_dim]).
  """

  in_features: int
  features: int
  kernel_names: tuple
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, equation: str, kernel_shape: tuple, bias_shape: tuple) -> jax.Array:
    kernel = self.param("kernel", _normal(self.kernel_names), (self.in_features, self.features), jnp.float32)
    bias = self.param("bias", _zeros(self.kernel_names[1:]), (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.einsum(equation, x, kernel.reshape(kernel_shape)) + bias.reshape(bias_shape)


class Attention(nn.Module):
  width: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h, hd = self.num_heads, self.width // self.num_heads
    # Heads-major layouts straight out of the projections ([3, B, H, T, hd] and back from [B, H, T, hd]):
    # on CPU this is ~30% faster fwd + bwd than [B, T, H, hd] through jax.nn.dot_product_attention,
    # whose einsums make XLA transpose every activation and its gradient.
    qkv = _HeadsProjection(d, 3 * self.width, ("embed", "qkv"), self.dtype, name="qkv")(
        x, "btd,dshk->sbhtk", (d, 3, h, hd), (3, 1, h, 1, hd))
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * hd ** -0.5  # release: (q @ k^T) * scale
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
    return _HeadsProjection(self.width, self.width, ("heads", "embed"), self.dtype, name="proj")(
        out, "bhtk,hkd->btd", (h, hd, self.width), (self.width,))


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU in torch's form, x/2 (1 + erf(x/sqrt 2)), as the release's nn.GELU computes it.

  jax.nn.gelu(approximate=False) uses erfc, which XLA expands into a piecewise polynomial that costs
  about 1.4x as much on CPU, fwd + bwd; the two agree to ~1e-6 absolute in float32.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


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
  """Pre-norm transformer block: x += Attn(LN1(x)); x += MLP(LN2(x))."""

  width: int
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = layer_norm(self.dtype, "norm1")(x)
    x = x + Attention(self.width, self.num_heads, self.dtype, name="attn")(y)
    y = layer_norm(self.dtype, "norm2")(x)
    x = x + Mlp(self.width, self.mlp_dim, self.dtype, name="mlp")(y)
    return constrain(x)


# model.remat: which activations of a block are kept for the backward pass; the others are recomputed.
REMAT_POLICIES = {
    "none": None,                                                  # keep everything (fastest)
    "full": jax.checkpoint_policies.nothing_saveable,              # keep only each block's input
    "dots": jax.checkpoint_policies.dots_saveable,                 # keep matmul outputs, recompute the rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # ... except attention's
}


def block_class(remat: str):
  if remat == "none":
    return Block
  return nn.remat(Block, policy=REMAT_POLICIES[remat])


def check_heads(width: int, num_heads: int, what: str) -> None:
  if num_heads <= 0 or width % num_heads != 0:
    raise ValueError(f"{what}: width {width} is not divisible by num_heads {num_heads}")


# --------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------

class VisionTransformer(nn.Module):
  """ViT encoder without CLS token.

  __call__(images [B, H, W, C], token_idx int32 [B, K] | None) -> [B, K or N, D]
  Per-block outputs (before the final norm) are sown into the
  'intermediates' collection as 'block_{i}'.
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

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid

  @nn.compact
  def __call__(self, images: jax.Array, token_idx: jax.Array | None = None) -> jax.Array:
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
    x = nn.Conv(
      self.width,
      kernel_size=(p, p),
      strides=(p, p),
      padding="VALID",
      use_bias=True,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_normal(("patch_h", "patch_w", "channels", "embed")),
      bias_init=_zeros(("embed",)),
      name="patch_embed",
    )(images)
    b = x.shape[0]
    x = x.reshape(b, self.num_patches, self.width)  # row-major tokens
    pos = sincos_pos_embed_2d(self.width, self.grid, self.grid)
    x = x + jnp.asarray(pos, dtype=self.dtype)[None]
    if token_idx is not None:
      x = jnp.take_along_axis(x, token_idx[..., None].astype(jnp.int32), axis=1)
    x = constrain(x)

    block_cls = block_class(self.remat)
    for i in range(self.depth):
      x = block_cls(self.width, self.num_heads, self.mlp_dim, self.dtype, name=f"blocks_{i}")(x)
      self.sow("intermediates", f"block_{i}", x)
    return layer_norm(self.dtype, "norm")(x)
