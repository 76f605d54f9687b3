"""grain pipelines: `make_pretrain_dataset` (infinite, deterministic, checkpointable pretraining batches
with masks) and `load_eval_arrays` (center-resized labelled arrays for evaluation).
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from typing import Callable, Sequence

import grain
import numpy as np

from ijepa_jax.data.sources import (ArraySource, ImageFolder, _channels, _data_get, _image_size, _pair, _to_channels,
                                    make_source)
from ijepa_jax.data.transforms import (_resize_boxes, _resize_full_batched, _sample_crop_boxes, center_resize,
                                       random_resized_crop)
from ijepa_jax.errors import ConfigError

_SHUFFLE_TAG = 0x1E9A  # separates the shuffle's random stream from other uses of config.seed

MaskFn = Callable[[np.random.Generator, int], "dict[str, np.ndarray]"]


# ---------------------------------------------------------------------------------------------- grain transforms
class _CropExample(grain.transforms.RandomMap):
  """Per-example random resized crop: record -> {'images', 'skipped'} (labels dropped)."""

  def __init__(self, size: int, scale, ratio, channels: int):
    self.size, self.scale, self.ratio, self.channels = size, scale, ratio, channels

  def random_map(self, element, rng: np.random.Generator):
    image = random_resized_crop(element["image"], rng, self.size, self.scale, self.ratio)
    return {"images": _to_channels(image, self.channels), "skipped": np.int32(element["skipped"])}


class _DecodeCropExample(grain.transforms.RandomMap):
  """Image-folder index -> {'images', 'skipped'}: the crop box drawn from the file's header, then only
  what the crop needs decoded (ImageFolder.load_crop); the same draws as _CropExample on the decoded image."""

  def __init__(self, source: ImageFolder, size: int, scale, ratio, channels: int, draft: bool):
    self.source, self.size, self.scale, self.ratio, self.channels, self.draft = (source, size, scale, ratio,
                                                                                  channels, draft)

  def random_map(self, index, rng: np.random.Generator):
    image, _, skipped = self.source.load_crop(int(index), rng, self.size, self.scale, self.ratio, self.draft)
    return {"images": _to_channels(image, self.channels), "skipped": np.int32(skipped)}


class _CropArrayBatch(grain.transforms.RandomMap):
  """Batch of example indices -> gathered, randomly cropped and resized {'images', 'skipped'}, vectorised."""

  def __init__(self, images: np.ndarray, size: int, scale, ratio, channels: int):
    self.images, self.size, self.scale, self.ratio, self.channels = images, size, scale, ratio, channels

  def random_map(self, indices, rng: np.random.Generator):
    indices = np.asarray(indices, np.int64) % self.images.shape[0]
    images = self.images[indices]
    b, height, width, _ = images.shape
    boxes = _sample_crop_boxes(rng, b, height, width, self.scale, self.ratio)
    out = _resize_boxes(images, boxes.astype(np.float64), self.size, crop_first=True)
    return {"images": _to_channels(out, self.channels), "skipped": np.zeros((b,), np.int32)}


class _AddMasks(grain.transforms.RandomMap):
  """Merges mask_fn(rng, batch_size)'s arrays into the batch (rng seeded from (seed, batch index))."""

  def __init__(self, mask_fn: MaskFn):
    self.mask_fn = mask_fn

  def random_map(self, batch, rng: np.random.Generator):
    b = batch["images"].shape[0]
    masks = self.mask_fn(rng, b)
    clash = set(masks) & set(batch)
    if clash:
      raise ValueError(f"mask_fn returned keys {sorted(clash)} that the batch already has")
    batch.update(masks)
    return batch


class _ShuffledIndexBatches(grain.MapDataset):
  """Element j: int64 [b] source indices of this process's j-th batch, computed with numpy for the whole batch.

  The same index stream as `MapDataset.range(n).shuffle().repeat()[process_index::process_count].batch(b)`
  (a fresh permutation of range(n) every epoch, processes interleaved over the global stream, so they
  read disjoint examples within an epoch), without grain's per-element Python calls. Epoch e's
  permutation is `np.random.default_rng([_SHUFFLE_TAG, seed, e]).permutation(n)`; the last two are cached.
  """

  def __init__(self, n: int, batch_size: int, process_index: int, process_count: int, seed: int):
    super().__init__()
    self._n, self._b, self._pi, self._pc, self._shuffle_seed = n, batch_size, process_index, process_count, seed
    self._lock = threading.Lock()
    self._perms: dict[int, np.ndarray] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_lock"], state["_perms"] = None, {}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"ShuffledIndexBatches(n={self._n}, batch={self._b}, shard={self._pi}/{self._pc})"

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([_SHUFFLE_TAG, self._shuffle_seed, epoch]).permutation(self._n)
      with self._lock:
        self._perms[epoch] = perm
        while len(self._perms) > 2:
          del self._perms[min(self._perms)]
    return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    positions = (int(index) * self._b + np.arange(self._b, dtype=np.int64)) * self._pc + self._pi
    epochs, within = np.divmod(positions, self._n)
    out = np.empty(self._b, np.int64)
    for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
      sel = epochs == epoch
      out[sel] = self._permutation(epoch)[within[sel]]
    return out


def _stack_batch(elements: Sequence[dict]) -> dict:
  return {"images": np.stack([e["images"] for e in elements]),
          "skipped": np.asarray([e["skipped"] for e in elements], np.int32)}


# ---------------------------------------------------------------------------------------------- pipelines
def _local_batch_size(config, process_count: int) -> int:
  batch_size = int(config.batch_size)
  if process_count <= 0 or batch_size <= 0 or batch_size % process_count:
    raise ConfigError(f"batch_size={batch_size} is not a positive multiple of the {process_count} processes: "
                      f"set --config.batch_size to a multiple of {process_count}.")
  return batch_size // process_count


def make_pretrain_dataset(config, mask_fn: MaskFn, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Infinite, deterministic, checkpointable iterator dataset of this process's pretraining batches.

  Each batch: {'images': uint8 [b, S, S, C], 'skipped': int32 [b], **mask_fn(rng, b)}, with
  b = batch_size // process_count. Processes read disjoint slices of each epoch's permutation.
  """
  b = _local_batch_size(config, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  size, channels = _image_size(config), _channels(config)
  scale = _pair(config, "crop_scale", (0.3, 1.0))
  ratio = _pair(config, "crop_ratio", (3 / 4, 4 / 3))
  num_workers = int(_data_get(config, "num_workers", 0))
  prefetch = max(1, int(_data_get(config, "prefetch_buffer", 2)))
  seed = int(config.seed) % 2**32
  source = make_source(config, str(_data_get(config, "split", "train")))
  if len(source) == 0:
    raise ConfigError(f"{source} is empty: check --config.data.path / --config.data.split.")

  if isinstance(source, ArraySource):
    # Shuffle/shard/batch indices with numpy, then one vectorised gather + crop per batch.
    ds = _ShuffledIndexBatches(len(source), b, process_index, process_count, seed).seed(seed)
    ds = ds.random_map(_CropArrayBatch(source.images, size, scale, ratio, channels))
    default_threads = 1
  elif isinstance(source, ImageFolder):
    # Indices travel through shuffle/shard; the map opens each file (same permutation as over the source).
    ds = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()
    ds = ds[process_index::process_count]
    ds = ds.random_map(_DecodeCropExample(source, size, scale, ratio, channels,
                                          bool(_data_get(config, "jpeg_draft", True))))
    ds = ds.batch(b, drop_remainder=True, batch_fn=_stack_batch)
    default_threads = max(1, min(16, (os.cpu_count() or 1) // max(1, num_workers)))
  else:
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    ds = ds[process_index::process_count]
    ds = ds.random_map(_CropExample(size, scale, ratio, channels))
    ds = ds.batch(b, drop_remainder=True, batch_fn=_stack_batch)
    default_threads = max(1, min(16, (os.cpu_count() or 1) // max(1, num_workers)))
  ds = ds.random_map(_AddMasks(mask_fn))
  threads = max(1, int(_data_get(config, "read_threads", default_threads)))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=max(1, prefetch // num_workers)))
  return it


def _eval_indices(n: int, max_examples: int | None) -> np.ndarray:
  """All indices, or `max_examples` evenly spaced ones (class-balanced for class-sorted sources)."""
  if max_examples is None or max_examples >= n:
    return np.arange(n)
  if max_examples <= 0:
    raise ConfigError(f"max_examples={max_examples} must be positive.")
  return np.arange(max_examples, dtype=np.int64) * n // max_examples


def load_eval_arrays(config, split: str, max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, S, S, C], labels int32 [N]) of a labelled split, center-resized to data.image_size."""
  size, channels = _image_size(config), _channels(config)
  source = make_source(config, split)
  idx = _eval_indices(len(source), max_examples)
  if isinstance(source, ArraySource):
    images = _resize_full_batched(source.images[idx], size)
    return _to_channels(images, channels), source.labels[idx]

  images = np.empty((len(idx), size, size, channels), np.uint8)
  labels = np.empty((len(idx),), np.int32)

  def one(k: int):
    if isinstance(source, ImageFolder):
      arr, label, _ = source.load(int(idx[k]), draft_size=size)
    else:
      record = source[int(idx[k])]
      arr, label = record["image"], int(record["label"])
    arr = _to_channels(arr, 1 if arr.shape[-1] == 1 else 3)
    images[k] = _to_channels(center_resize(arr, size), channels)
    labels[k] = label

  threads = max(1, min(16, os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for _ in pool.map(one, range(len(idx))):
      pass
  return images, labels
