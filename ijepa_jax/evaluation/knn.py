"""k-nearest-neighbour classification of frozen features (the DINO protocol).

Cosine similarity to every train feature, the k nearest vote with weight exp(similarity / T).
No parameters are fit, so it measures the geometry of the features as they are.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20,
        temperature: float = 0.07, chunk: int = 1024) -> dict:
  """Top-1 accuracy of temperature-weighted k-NN votes with cosine similarity."""
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  k = min(k, len(train_x))
  bank = jnp.asarray(train_x, jnp.float32)
  bank = bank / (jnp.linalg.norm(bank, axis=1, keepdims=True) + 1e-12)
  labels = jnp.asarray(train_y, jnp.int32)

  @jax.jit
  def predict(q):
    q = q / (jnp.linalg.norm(q, axis=1, keepdims=True) + 1e-12)
    sim, idx = jax.lax.top_k(q @ bank.T, k)                               # [B, k]
    votes = jax.nn.one_hot(labels[idx], num_classes) * jnp.exp(sim / temperature)[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)

  preds = []
  for start in range(0, len(test_x), chunk):
    q = np.asarray(test_x[start:start + chunk], np.float32)
    pad = chunk - len(q)
    q = np.concatenate([q, np.ones((pad, q.shape[1]), np.float32)]) if pad else q  # one shape: one compile
    preds.append(np.asarray(predict(q))[:chunk - pad])
  return {"top1": float(np.mean(np.concatenate(preds) == test_y)), "k": k, "temperature": temperature}
