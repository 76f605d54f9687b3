"""Frozen features of whole splits as float16 shards, written by every process over the mesh, resumable, read
back one shard at a time.

  <dir>/manifest.json     what the shards hold (examples, shard size, width, order); written first
  <dir>/shard_00007.npz   features float16 [n, width], labels int32 [n], index int64 [n] (source indices)

Shard i holds the examples at positions [i * shard_size, (i + 1) * shard_size) of a fixed permutation of the
split (seeded), so every shard mixes the classes and held-out shards are a fair sample. Shards are written
whole or not at all (storage.write_bytes), so a killed extraction resumes with the shards it has not finished.

Extraction runs in rounds: in round r process p extracts shard r * P + p, every process feeding its rows of
each global batch (`sharding.global_batch`) to one jitted forward pass over the mesh, so the encoder may be
sharded over all devices (as in training) and a round costs the time of one shard. Host memory: the shard
being extracted and a few batches of images, whatever the split's size.
"""
from __future__ import annotations

import functools
import io
import json
import sys
import time
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec as P

from ijepa_jax import sharding, storage
from ijepa_jax.errors import ConfigError

_ORDER_TAG = 0xFEA7  # the permutation's seed stream, apart from training's


def shard_name(i: int) -> str:
  return f"shard_{i:05d}.npz"


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def write(directory: str, examples: int, make_batches: Callable, image_shape: tuple, featurize: Callable, mesh: Mesh,
          batch_size: int, shard_size: int, seed: int, identity: dict, label: str = "features") -> dict:
  """Extracts the features of examples 0 .. examples - 1 into `directory` (local or gs://) unless there already;
  returns the manifest.

  make_batches(positions, local_batch) -> iterable of {'images', 'labels'} numpy batches of those examples in
  order, each image of `image_shape`; featurize(global images) -> [B, width] on the mesh (jitted). `identity` (checkpoint step, dataset,
  feature set) goes into the manifest: shards written for anything else are an error, never mixed in."""
  n = int(examples)
  if n == 0:
    raise ConfigError(f"{label}: no examples: check the evaluation's data.path and splits.")
  processes, me = jax.process_count(), jax.process_index()
  dp = sharding.data_parallel_size(mesh)
  rows = sharding.process_rows(mesh, max(dp, batch_size // dp * dp))
  local_batch = len(rows)
  shard_size = max(1, min(int(shard_size), n))
  num_shards = -(-n // shard_size)
  manifest = {"examples": n, "shard_size": shard_size, "shards": num_shards, "seed": seed, **identity}
  manifest_path = storage.join(directory, "manifest.json")
  if storage.path(manifest_path).exists():
    have = json.loads(storage.path(manifest_path).read_text())
    differ = {k: (have.get(k), v) for k, v in manifest.items() if have.get(k) != v}
    if differ:
      raise ConfigError(f"{directory} holds features of something else ({differ}, as (there, here)): pass another "
                        f"--out, or delete that folder to extract again.")
  elif me == 0:
    storage.write_text(manifest_path, json.dumps(manifest, indent=1))
  order = np.random.default_rng([_ORDER_TAG, seed]).permutation(n)
  # Every process lists the finished shards before any process writes one: the same view everywhere.
  done = {i for i in range(num_shards) if storage.path(storage.join(directory, shard_name(i))).exists()}
  _sync(f"listed {directory}")
  rounds = [r for r in range(-(-num_shards // processes))
            if any(r * processes + p < num_shards and r * processes + p not in done for p in range(processes))]
  steps_per_round = -(-shard_size // local_batch)
  start, extracted = time.perf_counter(), 0
  for k, r in enumerate(rounds):
    i = r * processes + me
    mine = i < num_shards and i not in done
    idx = order[i * shard_size:(i + 1) * shard_size] if mine else np.zeros((0,), np.int64)
    batches = iter(make_batches(idx, local_batch)) if mine else iter(())
    feats, labels = [], []
    for _ in range(steps_per_round):  # every process the same number of steps (the collective forward)
      batch = next(batches, None)
      images = batch["images"] if batch is not None else None
      real = 0 if images is None else len(images)
      if images is None:
        images = np.zeros((local_batch, *image_shape), np.uint8)
      elif real < local_batch:
        images = np.concatenate([images, np.zeros((local_batch - real, *images.shape[1:]), images.dtype)])
      out = featurize(sharding.global_batch({"images": images}, mesh)["images"])
      local = np.asarray(multihost_utils.global_array_to_host_local_array(out, mesh, P(sharding.BATCH_AXES)))
      if real:
        feats.append(local[:real].astype(np.float16))
        labels.append(np.asarray(batch["labels"], np.int32))
    if mine:
      buf = io.BytesIO()
      np.savez(buf, features=np.concatenate(feats), labels=np.concatenate(labels), index=idx.astype(np.int64))
      storage.write_bytes(storage.join(directory, shard_name(i)), buf.getvalue())
      extracted += len(idx)
    if me == 0:
      rate = extracted * processes / max(time.perf_counter() - start, 1e-9)
      left = (len(rounds) - k - 1) * shard_size * processes / max(rate, 1e-9)
      print(f"  {label}: round {k + 1}/{len(rounds)} ({num_shards - len(done)} of {num_shards} shards to do), "
            f"~{rate:.0f} images/s, ~{left / 60:.1f} min left", file=sys.stderr, flush=True)
  _sync(f"wrote {directory}")
  return manifest


class Shards:
  """Read side of a features folder: `load(i)` one shard, `arrays()` all of them (small splits only)."""

  def __init__(self, directory: str, columns: slice = slice(None)):
    self.directory, self.columns = directory, columns
    path = storage.path(storage.join(directory, "manifest.json"))
    if not path.exists():
      raise ConfigError(f"{directory} holds no features (no manifest.json): run python -m ijepa_jax.evaluate first.")
    self.manifest = json.loads(path.read_text())
    self.num_shards, self.examples = int(self.manifest["shards"]), int(self.manifest["examples"])

  def select(self, columns: slice) -> "Shards":
    return Shards(self.directory, columns)

  def count(self, i: int) -> int:
    """Examples in shard i (from the manifest: no read)."""
    size = int(self.manifest["shard_size"])
    return min(size, self.examples - i * size)

  @functools.cached_property
  def width(self) -> int:
    """Feature columns selected (one read of shard 0, once)."""
    return self.load(0)[0].shape[1]

  def _open(self, i: int):
    p = storage.join(self.directory, shard_name(i))
    return np.load(io.BytesIO(storage.path(p).read_bytes()) if storage.is_remote(p) else storage.path(p))

  def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [n, width'] (the selected columns), labels int32 [n], source index int64 [n])."""
    with self._open(i) as z:
      return z["features"][:, self.columns].astype(np.float32), z["labels"], z["index"]

  def load_meta(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, source index) of shard i, without its features."""
    with self._open(i) as z:
      return z["labels"], z["index"]

  def labels(self) -> tuple[np.ndarray, np.ndarray]:
    """(labels, source index) of every example, in shard order (a few bytes an example)."""
    parts = [self.load_meta(i) for i in range(self.num_shards)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  def arrays(self, shards=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32, labels, source index) of the given shards (default: all), in shard order."""
    parts = [self.load(i) for i in (range(self.num_shards) if shards is None else shards)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
