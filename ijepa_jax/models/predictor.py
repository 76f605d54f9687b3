"""I-JEPA predictor: a narrow ViT over context tokens plus mask tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from ijepa_jax.models.vit import (
  INIT_STD,
  Dtype,
  check_heads,
  constrain,
  dense,
  layer_norm,
  run_blocks,
  sincos_pos_embed_2d,
)


class Predictor(nn.Module):
  """Predicts target-encoder features at target positions from context tokens.

  __call__(context [B, Kc, D], context_idx int32 [B, Kc], target_idx int32 [B, M, Kt],
           context_count int32 [B] | None, target_count int32 [B] | None) -> [B, M, Kt, out_width]
  out_width: the output projection's width, by default the encoder's (`embed_width`, representation
  targets); patch_size^2 x channels for pixel targets (config.target='pixels').
  Each of the M target blocks is its own sequence (context + its mask tokens),
  so target blocks never attend to one another. With counts, only the first context_count[b] context
  tokens and target_count[b] tokens of each block are real: padding is never attended to, and the
  outputs at padded target positions are meaningless.

  Precision as the release's autocast (see models/vit.py): the embedded context plus its positions is
  rounded to `dtype` (the release adds them in place into the bf16 Linear output), the mask tokens plus
  positions are fp32, their concatenation promotes to an fp32 stream, and the output is the `dtype`
  projection.
  """

  grid: int
  embed_width: int
  width: int = 384
  out_width: int | None = None   # None: embed_width
  depth: int = 12
  num_heads: int = 16
  mlp_dim: int | None = None
  dtype: Dtype = jnp.float32
  remat: str = "none"  # a vit.REMAT_POLICIES key
  attention: str = "xla"  # a vit.ATTENTION value
  scan_layers: bool = False  # see vit.run_blocks

  @nn.compact
  def __call__(self, context: jax.Array, context_idx: jax.Array, target_idx: jax.Array,
               context_count: jax.Array | None = None, target_count: jax.Array | None = None) -> jax.Array:
    check_heads(self.width, self.num_heads, "Predictor")
    if target_idx.ndim != 3:
      raise ValueError(f"Predictor: target_idx must be [B, M, Kt], got shape {target_idx.shape}")
    b, kc, _ = context.shape
    _, m, kt = target_idx.shape
    mlp_dim = self.mlp_dim if self.mlp_dim is not None else 4 * self.width
    pos = jnp.asarray(sincos_pos_embed_2d(self.width, self.grid, self.grid), jnp.float32)

    x = dense(self.width, ("embed_in", "embed"), ("embed",), self.dtype, "predictor_embed")(context)
    x = (x + pos[context_idx]).astype(x.dtype)  # [B, Kc, W]; the release's `x += pos` keeps x's dtype

    mask_token = self.param(
      "mask_token",
      nn.with_logical_partitioning(nn.initializers.normal(stddev=INIT_STD), (None, None, "embed")),
      (1, 1, self.width),
      jnp.float32,
    )
    tgt = mask_token[None] + pos[target_idx]  # [B, M, Kt, W], fp32
    ctx = jnp.broadcast_to(x[:, None], (b, m, kc, self.width)).astype(jnp.float32)
    x = jnp.concatenate([ctx, tgt], axis=2)  # [B, M, Kc+Kt, W], fp32 as torch.cat promotes
    x = x.reshape(b * m, kc + kt, self.width)
    x = constrain(x)
    valid = None
    if context_count is not None or target_count is not None:
      ok = [jnp.ones((b, n), bool) if c is None else jnp.arange(n) < c[:, None]
            for c, n in ((context_count, kc), (target_count, kt))]
      valid = jnp.repeat(jnp.concatenate(ok, axis=1), m, axis=0)   # [B*M, Kc+Kt], rows ordered as x's

    x, _ = run_blocks(x, self.depth, self.remat, self.scan_layers, valid=valid, width=self.width,
                      num_heads=self.num_heads, mlp_dim=mlp_dim, dtype=self.dtype, attention=self.attention)
    x = layer_norm("predictor_norm")(x)
    x = x[:, kc:]
    out = self.embed_width if self.out_width is None else self.out_width
    x = dense(out, ("embed", "embed_out"), ("embed_out",), self.dtype, "predictor_proj")(x)
    return x.reshape(b, m, kt, out)
