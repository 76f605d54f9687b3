"""Frozen-encoder features: average-pooled patch tokens, extracted in batches sharded over the mesh."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ijepa_jax import sharding
from ijepa_jax.models.vit import layer_norm
from ijepa_jax.step import normalise


LAYERS = ("last", "last4")
POOLS = ("mean", "none")


def tokens(encoder: nn.Module, params, x: jax.Array, layers: str = "last") -> jax.Array:
  """Patch tokens of normalised images x: the final output [B, N, D], or (layers='last4') the last
  4 blocks' outputs, each through the encoder's final LayerNorm, concatenated: [B, N, 4D]."""
  if layers == "last":
    return encoder.apply({"params": params}, x)
  if layers != "last4":
    raise ValueError(f"layers={layers!r} is not one of {LAYERS}")
  depth = encoder.depth
  _, inter = encoder.apply({"params": params}, x, keep_blocks=min(4, depth), mutable=["intermediates"])
  outs = [inter["intermediates"][f"block_{i}"][0] for i in range(max(0, depth - 4), depth)]
  norm = layer_norm("norm")  # the encoder's final LayerNorm (fp32, as in the encoder)
  return jnp.concatenate([norm.apply({"params": params["norm"]}, o) for o in outs], axis=-1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _forward(params, x, mean: tuple, std: tuple, encoder: nn.Module, pool: str, layers: str):
  x = normalise(x, mean, std) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  t = tokens(encoder, params, x, layers).astype(jnp.float32)
  return t.mean(axis=1) if pool == "mean" else t


def extract(encoder: nn.Module, params, images: np.ndarray, mean, std, batch_size: int, mesh: Mesh,
            pool: str = "mean", layers: str = "last") -> np.ndarray:
  """images [N, S, S, C] -> float32 [N, D'] (pool='mean') or [N, tokens, D'] (pool='none').
  uint8 images are normalised with mean/std; float images are taken as already normalised.

  Forward passes of batch_size images; a shorter remainder (or a short input) is padded only to a
  multiple of the data-parallel size, so 2 images on one device cost a forward pass of 2, not of
  batch_size, at the price of at most one more compilation for that shape."""
  if pool not in POOLS:
    raise ValueError(f"pool={pool!r} is not one of {POOLS}")
  dp = sharding.data_parallel_size(mesh)
  batch_size = max(dp, batch_size // dp * dp)

  out = []
  n = len(images)
  with jax.set_mesh(mesh):
    for start in range(0, n, batch_size):
      chunk = images[start:start + batch_size]
      pad = -len(chunk) % dp  # the batch axis is split over the data-parallel devices
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
      x = jax.device_put(chunk, sharding.batch_sharding(mesh))
      out.append(np.asarray(_forward(params, x, tuple(mean), tuple(std), encoder, pool, layers))[:len(chunk) - pad])
  return np.concatenate(out)
