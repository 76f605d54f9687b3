"""k-nearest-neighbour classification of frozen features (the DINO protocol).

Cosine similarity to every train feature, the k nearest vote with weight exp(similarity / T).
No parameters are fit, so it measures the geometry of the features as they are.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _normalised(x):
  return x / (jnp.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _predict(q, bank, labels, temperature, k: int, num_classes: int):
  sim, idx = jax.lax.top_k(_normalised(q) @ bank.T, k)                   # [B, k]
  votes = jax.nn.one_hot(labels[idx], num_classes) * jnp.exp(sim / temperature)[..., None]
  return jnp.argmax(votes.sum(axis=1), axis=-1)


@functools.partial(jax.jit, static_argnames="k")
def _merge(q, bank, bank_labels, sim0, lab0, k: int):
  """The k most similar of (the candidates so far, this bank) for each query."""
  sim = jnp.concatenate([sim0, q @ bank.T], axis=1)
  lab = jnp.concatenate([lab0, jnp.broadcast_to(bank_labels, (q.shape[0], bank.shape[0]))], axis=1)
  sim, pos = jax.lax.top_k(sim, k)
  return sim, jnp.take_along_axis(lab, pos, axis=1)


def knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20,
        temperature: float = 0.07, chunk: int = 1024) -> dict:
  """Top-1 accuracy of temperature-weighted k-NN votes with cosine similarity."""
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  k = min(k, len(train_x))
  bank = _normalised(jnp.asarray(train_x, jnp.float32))
  labels = jnp.asarray(train_y, jnp.int32)
  preds = []
  for start in range(0, len(test_x), chunk):
    q = np.asarray(test_x[start:start + chunk], np.float32)
    pad = chunk - len(q)
    q = np.concatenate([q, np.ones((pad, q.shape[1]), np.float32)]) if pad else q  # one shape: one compile
    preds.append(np.asarray(_predict(q, bank, labels, temperature, k=k, num_classes=num_classes))[:chunk - pad])
  return {"top1": float(np.mean(np.concatenate(preds) == test_y)), "k": k, "temperature": temperature}


def knn_streamed(train, test, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> dict:
  """`knn` over a feature bank too large for one host: each process takes its share of the train shards
  (shard i to process i % P), keeps every test query's k most similar examples among them (batched top-k,
  merged shard by shard), then the processes' candidates are gathered and merged. train, test:
  evaluation.shards.Shards. The test features are held in memory (float32, the queries)."""
  from jax.experimental import multihost_utils
  test_x, test_y, _ = test.arrays()
  test_x = test_x / (np.linalg.norm(test_x, axis=1, keepdims=True) + 1e-12)
  q_count = len(test_x)
  k = min(k, train.examples)
  best_sim = np.full((q_count, k), -np.inf, np.float32)
  best_lab = np.zeros((q_count, k), np.int32)

  pad = -q_count % chunk
  queries = np.concatenate([test_x, np.zeros((pad, test_x.shape[1]), np.float32)]) if pad else test_x
  for i in range(jax.process_index(), train.num_shards, jax.process_count()):
    bank, labels, _ = train.load(i)
    bank = bank / (np.linalg.norm(bank, axis=1, keepdims=True) + 1e-12)
    for s in range(0, q_count, chunk):
      e = min(s + chunk, q_count)
      sim, lab = _merge(queries[s:s + chunk], bank, labels, np.pad(best_sim[s:e], ((0, chunk - (e - s)), (0, 0))),
                        np.pad(best_lab[s:e], ((0, chunk - (e - s)), (0, 0))), k=k)
      best_sim[s:e], best_lab[s:e] = np.asarray(sim)[:e - s], np.asarray(lab)[:e - s]
  if jax.process_count() > 1:  # [P, Q, k] candidates -> the k best of all
    sims = np.asarray(multihost_utils.process_allgather(best_sim))
    labs = np.asarray(multihost_utils.process_allgather(best_lab))
    sims, labs = np.concatenate(list(sims), axis=1), np.concatenate(list(labs), axis=1)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    best_sim, best_lab = np.take_along_axis(sims, top, 1), np.take_along_axis(labs, top, 1)
  num_classes = int(max(best_lab.max(), test_y.max())) + 1
  votes = np.zeros((q_count, num_classes))
  np.add.at(votes, (np.arange(q_count)[:, None], best_lab), np.exp(best_sim.astype(np.float64) / temperature))
  return {"top1": float(np.mean(np.argmax(votes, axis=1) == test_y)), "k": k, "temperature": temperature}
