"""Frozen-encoder features: average-pooled patch tokens, extracted in batches sharded over the mesh."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ijepa_jax import sharding
from ijepa_jax.step import normalise


def extract(encoder: nn.Module, params, images: np.ndarray, mean, std, batch_size: int, mesh: Mesh,
            pool: str = "mean") -> np.ndarray:
  """images uint8 [N, S, S, C] -> float32 [N, D] (pool='mean') or [N, tokens, D] (pool='none')."""
  dp = sharding.data_parallel_size(mesh)
  batch_size = max(dp, batch_size // dp * dp)

  @jax.jit
  def forward(p, x):
    tokens = encoder.apply({"params": p}, normalise(x, mean, std)).astype(jnp.float32)
    return tokens.mean(axis=1) if pool == "mean" else tokens

  out = []
  n = len(images)
  with jax.set_mesh(mesh):
    for start in range(0, n, batch_size):
      chunk = images[start:start + batch_size]
      pad = batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
      x = jax.device_put(chunk, sharding.batch_sharding(mesh))
      out.append(np.asarray(forward(params, x))[:batch_size - pad])
  return np.concatenate(out)
