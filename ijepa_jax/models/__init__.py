"""I-JEPA models: ViT encoder and predictor."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ijepa_jax.errors import ConfigError
from ijepa_jax.models.layout import stack_blocks, unstack_blocks
from ijepa_jax.models.predictor import Predictor
from ijepa_jax.models.vit import ATTENTION, REMAT_POLICIES, VIT_SIZES, VisionTransformer, sincos_pos_embed_2d

__all__ = ["VisionTransformer", "Predictor", "VIT_SIZES", "sincos_pos_embed_2d", "make_models", "stack_blocks",
           "unstack_blocks"]


def _override(model_cfg, key: str, default: int) -> int:
  value = model_cfg[key]
  if value is None or value == -1:
    return int(default)
  return int(value)


def make_models(model_cfg, image_size: int, channels: int, dtype: Any, predictor_out: int | None = None):
  """Build (encoder, predictor) from a `model` ConfigDict.

  Keys (all of defaults.py's `model`; a file of an earlier version through defaults.complete): name (VIT_SIZES
  key), patch_size, width / depth / num_heads / mlp_dim overrides (-1 = from VIT_SIZES), predictor_width,
  predictor_depth, predictor_heads (-1 = encoder heads), remat (a REMAT_POLICIES key; True / False, as older
  configs have it, mean 'full' / 'none'), attention ('xla' | 'cudnn'), scan_layers (the blocks under one
  nn.scan, see vit.run_blocks).
  The encoder is used for both the context and the target encoder. predictor_out: the predictor's
  output width (None: the encoder's width; patch_size^2 x channels for pixel targets).
  """
  name = model_cfg.name
  if name not in VIT_SIZES:
    raise ConfigError(
      f"model.name={name!r} is not a known ViT size; valid names: {sorted(VIT_SIZES)}"
    )
  size = VIT_SIZES[name]
  width = _override(model_cfg, "width", size["width"])
  depth = _override(model_cfg, "depth", size["depth"])
  num_heads = _override(model_cfg, "num_heads", size["num_heads"])
  mlp_dim = _override(model_cfg, "mlp_dim", size["mlp_dim"])
  patch_size = int(model_cfg.patch_size)
  remat = model_cfg.remat
  remat = {"true": "full", "false": "none"}.get(str(remat).lower(), str(remat))  # older configs: a bool
  if remat not in REMAT_POLICIES:
    raise ConfigError(f"model.remat={remat!r} is not one of {sorted(REMAT_POLICIES)}: set e.g. "
                      f"--config.model.remat=full (least memory) or none (fastest).")
  attention = model_cfg.attention
  if attention not in ATTENTION:
    raise ConfigError(f"model.attention={attention!r} is not one of {list(ATTENTION)}: xla (einsums, any "
                      "backend) or cudnn (fused attention on NVIDIA GPUs).")
  if attention == "cudnn" and jnp.dtype(dtype) == jnp.float32:
    raise ConfigError("model.attention=cudnn needs --config.dtype=bfloat16 (cuDNN's fused attention has no "
                      "fp32 kernel); use model.attention=xla for float32.")

  scan_layers = model_cfg.scan_layers
  if not isinstance(scan_layers, bool):
    raise ConfigError(f"model.scan_layers={scan_layers!r} must be True or False.")

  if patch_size <= 0 or image_size % patch_size != 0:
    raise ConfigError(
      f"model.patch_size={patch_size} must divide the image size {image_size}"
    )
  if num_heads <= 0 or width % num_heads != 0:
    raise ConfigError(
      f"model.width={width} must be divisible by model.num_heads={num_heads}"
    )
  if width % 4 != 0:
    raise ConfigError(
      f"model.width={width} must be a multiple of 4 (2-D sin-cos positional embedding)"
    )

  pred_width = _override(model_cfg, "predictor_width", 384)
  pred_depth = _override(model_cfg, "predictor_depth", 12)
  pred_heads = _override(model_cfg, "predictor_heads", num_heads)
  if pred_heads <= 0 or pred_width % pred_heads != 0:
    raise ConfigError(
      f"model.predictor_width={pred_width} must be divisible by "
      f"model.predictor_heads={pred_heads}"
    )
  if pred_width % 4 != 0:
    raise ConfigError(
      f"model.predictor_width={pred_width} must be a multiple of 4 "
      "(2-D sin-cos positional embedding)"
    )
  if depth <= 0 or pred_depth <= 0:
    raise ConfigError(
      f"model.depth={depth} and model.predictor_depth={pred_depth} must be positive"
    )

  encoder = VisionTransformer(
    image_size=image_size,
    patch_size=patch_size,
    channels=channels,
    width=width,
    depth=depth,
    num_heads=num_heads,
    mlp_dim=mlp_dim,
    dtype=dtype,
    remat=remat,
    attention=attention,
    scan_layers=scan_layers,
  )
  predictor = Predictor(
    grid=image_size // patch_size,
    embed_width=width,
    width=pred_width,
    out_width=predictor_out,
    depth=pred_depth,
    num_heads=pred_heads,
    mlp_dim=None,
    dtype=dtype,
    remat=remat,
    attention=attention,
    scan_layers=scan_layers,
  )
  return encoder, predictor
