"""The FLOPs of one I-JEPA train step, counted analytically from the model's shapes.

Used by the memory report (next to the TPU compiler's own count) and by experiments/benchmark.py
(achieved FLOP/s and MFU).
"""
from __future__ import annotations


def _blocks_flops(tokens: int, width: int, mlp: int, depth: int) -> int:
  """Forward FLOPs of `depth` transformer blocks on one sequence: qkv, proj, MLP, QK^T and AV."""
  dense = 2 * tokens * (3 * width * width + width * width + 2 * width * mlp)
  attention = 2 * (2 * tokens * tokens * width)  # QK^T and AV over all heads
  return depth * (dense + attention)


def step_flops(*, grid: int, patch: int, channels: int, width: int, depth: int, mlp: int, pred_width: int,
               pred_depth: int, pred_mlp: int, num_context: int, num_targets: int, num_target: int) -> dict:
  """FLOPs of one I-JEPA step per image, by part (2 per multiply-add; backward = 2x forward).

  Counts matmuls (patch embedding included) and attention; layer norms, GELU, softmax, the loss, the
  optimizer and the EMA are elementwise and left out. The patch embedding always runs on all N
  patches: both encoders embed the full image and then gather tokens.
  """
  n = grid * grid
  embed = 2 * n * patch * patch * channels * width

  def encoder(tokens):
    return embed + _blocks_flops(tokens, width, mlp, depth)

  predictor = (2 * num_context * width * pred_width                     # predictor_embed, once per image
               + num_targets * _blocks_flops(num_context + num_target, pred_width, pred_mlp, pred_depth)
               + 2 * num_targets * num_target * pred_width * width)     # predictor_proj on the target tokens
  parts = {"target encoder forward (N tokens)": encoder(n),
           "context encoder forward + backward (K tokens)": 3 * encoder(num_context),
           "predictor forward + backward (M sequences of K + Kt)": 3 * predictor}
  parts["total"] = sum(parts.values())
  return parts


def config_flops(config, num_context: int, num_targets: int, num_target: int) -> dict:
  """step_flops for a config's models at the mask sampler's static token counts (per image)."""
  import jax.numpy as jnp

  from ijepa_jax.models import make_models
  dtype = jnp.dtype(config.dtype)   # the shapes do not depend on it, but model.attention=cudnn needs bf16
  encoder, predictor = make_models(config.model, config.data.image_size, config.data.channels, dtype)
  return step_flops(grid=encoder.grid, patch=encoder.patch_size, channels=encoder.channels, width=encoder.width,
                    depth=encoder.depth, mlp=encoder.mlp_dim, pred_width=predictor.width,
                    pred_depth=predictor.depth, pred_mlp=predictor.mlp_dim or 4 * predictor.width,
                    num_context=num_context, num_targets=num_targets, num_target=num_target)
