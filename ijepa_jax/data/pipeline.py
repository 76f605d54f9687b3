"""grain pipelines: `make_pretrain_dataset` (infinite, deterministic pretraining batches with masks, each a
function of the global step, so resumable at any step on any number of processes) and `load_eval_arrays`
(center-resized labelled arrays for evaluation).
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from typing import Callable, Sequence

import grain
import numpy as np

from ijepa_jax import defaults
from ijepa_jax.data.encoded import EncodedImages
from ijepa_jax.data.sources import ArraySource, _channels, _data_get, _image_size, _pair, make_source
from ijepa_jax.data.transforms import (_resize_boxes, _resize_full_batched, _sample_crop_boxes, _to_channels,
                                       center_resize, random_resized_crop)
from ijepa_jax.errors import ConfigError

MaskFn = Callable[[np.random.Generator, int], "dict[str, np.ndarray]"]


# ---------------------------------------------------------------------------------------------- the global order
# Every random draw of pretraining comes from a generator keyed by where it lands in the *global* stream
# (seed, global step, global row or mask group), never by a process's own position: the batches, crops and
# masks of a step are the same on 1 or 64 processes, and a run resumes at any step on any process count.
_SHUFFLE_TAG = 0x1E9A  # separates each random stream from the others drawn from config.seed
_CROP_TAG = 0xC409
_MASK_TAG = 0x3A5C


def _rng(tag: int, seed: int, *where: int) -> np.random.Generator:
  return np.random.default_rng([tag, seed, *where])


class GlobalOrder:
  """Which source example each (global step, global row) reads: position step * batch_size + row of an
  endless stream of epochs, epoch e a fresh permutation `np.random.default_rng([_SHUFFLE_TAG, seed, e])`
  of range(n) (the last two cached). Processes that read disjoint rows read disjoint examples."""

  def __init__(self, n: int, batch_size: int, seed: int):
    self.n, self.batch_size, self.seed = n, batch_size, seed
    self._lock = threading.Lock()
    self._perms: dict[int, np.ndarray] = {}

  def __getstate__(self):  # grain's worker processes get a copy without the lock and the cache
    state = dict(self.__dict__)
    state["_lock"], state["_perms"] = None, {}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
    if perm is None:
      perm = _rng(_SHUFFLE_TAG, self.seed, epoch).permutation(self.n)
      with self._lock:
        self._perms[epoch] = perm
        while len(self._perms) > 2:
          del self._perms[min(self._perms)]
    return perm

  def indices(self, step: int, rows: np.ndarray) -> np.ndarray:
    epochs, within = np.divmod(step * self.batch_size + np.asarray(rows, np.int64), self.n)
    out = np.empty(len(within), np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._permutation(int(epoch))[within[sel]]
    return out


class _Endless(grain.MapDataset):
  """Element k of an endless stream (len is sys.maxsize): one process's k-th batch or k-th row."""

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"{type(self).__name__}(rows={len(self.rows)}, start_step={self.start})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self.element(int(index))


class _LocalBatches(_Endless):
  """Element k: {'step', 'indices' [b]}: the source indices of this process's rows of global step start + k."""

  def __init__(self, order: GlobalOrder, rows: np.ndarray, start_step: int):
    super().__init__()
    self.order, self.rows, self.start = order, rows, start_step

  def element(self, k: int) -> dict:
    step = self.start + k
    return {"step": step, "indices": self.order.indices(step, self.rows)}


class _LocalRows(_Endless):
  """Element k: {'step', 'row', 'index'}: this process's (k % b)-th row of global step start + k // b."""

  def __init__(self, order: GlobalOrder, rows: np.ndarray, start_step: int):
    super().__init__()
    self.order, self.rows, self.start = order, rows, start_step

  def element(self, k: int) -> dict:
    step, i = self.start + k // len(self.rows), k % len(self.rows)
    row = int(self.rows[i])
    return {"step": step, "row": row, "index": int(self.order.indices(step, self.rows[i:i + 1])[0])}


# ---------------------------------------------------------------------------------------------- grain transforms
class _CropExample(grain.transforms.Map):
  """Per-example random resized crop of a decoded record, drawn from (seed, step, global row)."""

  def __init__(self, source, size: int, scale, ratio, channels: int, seed: int):
    self.source, self.size, self.scale, self.ratio, self.channels, self.seed = (source, size, scale, ratio,
                                                                                channels, seed)

  def map(self, element):
    record = self.source[element["index"]]
    rng = _rng(_CROP_TAG, self.seed, element["step"], element["row"])
    image = random_resized_crop(record["image"], rng, self.size, self.scale, self.ratio)
    return {"images": _to_channels(image, self.channels), "skipped": np.int32(record["skipped"]),
            "step": element["step"]}


class _DecodeCropExample(grain.transforms.Map):
  """Image-folder or record-shard row -> {'images', 'skipped'}: the crop box drawn from the file's header, then
  only what the crop needs decoded (EncodedImages.load_crop); the same draws as _CropExample on the decoded
  image."""

  def __init__(self, source: EncodedImages, size: int, scale, ratio, channels: int, draft: bool, seed: int):
    self.source, self.size, self.scale, self.ratio, self.channels, self.draft, self.seed = (
        source, size, scale, ratio, channels, draft, seed)

  def map(self, element):
    rng = _rng(_CROP_TAG, self.seed, element["step"], element["row"])
    image, _, skipped = self.source.load_crop(element["index"], rng, self.size, self.scale, self.ratio, self.draft)
    return {"images": _to_channels(image, self.channels), "skipped": np.int32(skipped), "step": element["step"]}


class _CropArrayBatch(grain.transforms.Map):
  """This process's indices of a step -> gathered, cropped and resized {'images', 'skipped'}, vectorised; the
  boxes of the whole global batch come from (seed, step), each process keeping its rows'."""

  def __init__(self, images: np.ndarray, size: int, scale, ratio, channels: int, seed: int, batch_size: int,
               rows: np.ndarray):
    self.images, self.size, self.scale, self.ratio, self.channels = images, size, scale, ratio, channels
    self.seed, self.batch_size, self.rows = seed, batch_size, rows

  def map(self, element):
    images = self.images[element["indices"] % self.images.shape[0]]
    b, height, width, _ = images.shape
    rng = _rng(_CROP_TAG, self.seed, element["step"])
    boxes = _sample_crop_boxes(rng, self.batch_size, height, width, self.scale, self.ratio)[self.rows]
    out = _resize_boxes(images, boxes.astype(np.float64), self.size, crop_first=True)
    return {"images": _to_channels(out, self.channels), "skipped": np.zeros((b,), np.int32),
            "step": element["step"]}


def mask_group_size(mask_fn, batch_size: int) -> int:
  """Images per mask draw: the sampler's `group_size` (counts=release: the release's per-GPU batch,
  mask.reference_batch), else (0 or none) the whole global batch."""
  group = int(getattr(mask_fn, "group_size", 0) or batch_size)
  if batch_size % group:
    raise ConfigError(f"the masks are drawn for groups of mask.reference_batch={group} images (the release's "
                      f"per-GPU batch), which does not divide batch_size={batch_size}: set "
                      f"--config.mask.reference_batch to a divisor of {batch_size}.")
  return group


def context_buckets(mask_cfg, mask_fn) -> tuple[int, ...]:
  """The context lengths a global batch may be padded to (mask.context_buckets, ascending, the sampler's
  num_context last), or () for the one padded shape. Only the release's counts vary the context length."""
  buckets = tuple(sorted({int(b) for b in (defaults.get(mask_cfg, "mask.context_buckets") or ())}))
  if not buckets:
    return ()
  longest = int(getattr(mask_fn, "num_context", 0))
  if getattr(mask_fn, "counts", None) != "release":
    raise ConfigError("mask.context_buckets pad each batch's contexts to the shortest bucket that holds them, which "
                      "only the release's counts vary: set --config.mask.counts=release, or --config.mask."
                      "context_buckets=() .")
  if buckets[0] <= int(getattr(mask_fn, "min_keep", 0)) or buckets[-1] > longest:
    raise ConfigError(f"mask.context_buckets={buckets} must lie between mask.min_keep={mask_fn.min_keep} and the "
                      f"padded context length {longest} (mask.num_context): e.g. --config.mask.context_buckets="
                      f"'({longest // 2}, {3 * longest // 4})'.")
  return buckets if buckets[-1] == longest else (*buckets, longest)


class _AddMasks(grain.transforms.Map):
  """Adds the masks of this process's rows: each group of `group` global rows of a step draws its own with
  mask_fn(rng(seed, step, group index), group), so a process holding part of a group computes the whole group
  (the release truncates contexts to a group's shortest) and keeps its rows.

  With context buckets, every process draws every group of the step (a few ms each), so that all agree on the
  step's bucket: the shortest that holds the longest context of the global batch; the contexts (real tokens
  first, then padding) are cut to it."""

  def __init__(self, mask_fn: MaskFn, group: int, rows: np.ndarray, seed: int, buckets: tuple = (),
               batch_size: int = 0):
    self.mask_fn, self.group, self.rows, self.seed = mask_fn, group, np.asarray(rows, np.int64), seed
    self.buckets = tuple(buckets)
    self.groups = np.unique(self.rows // group)
    self.all_groups = np.arange(batch_size // group) if self.buckets else self.groups
    self.take = np.searchsorted(self.groups, self.rows // group) * group + self.rows % group

  def map(self, batch):
    step = int(np.asarray(batch.pop("step")).flat[0])
    every = {int(g): self.mask_fn(_rng(_MASK_TAG, self.seed, step, int(g)), self.group) for g in self.all_groups}
    drawn = [every[int(g)] for g in self.groups]
    masks = {k: np.concatenate([d[k] for d in drawn])[self.take] for k in drawn[0]}
    if self.buckets:
      longest = max(int(d["context_count"].max()) for d in every.values())
      width = next(b for b in self.buckets if b >= longest)
      masks["context_idx"] = np.ascontiguousarray(masks["context_idx"][:, :width])
    clash = set(masks) & set(batch)
    if clash:
      raise ValueError(f"mask_fn returned keys {sorted(clash)} that the batch already has")
    batch.update(masks)
    return batch


def _stack_batch(elements: Sequence[dict]) -> dict:
  return {"images": np.stack([e["images"] for e in elements]),
          "skipped": np.asarray([e["skipped"] for e in elements], np.int32), "step": elements[0]["step"]}


# ---------------------------------------------------------------------------------------------- pipelines
def process_rows(batch_size: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """The global rows a process holds when its devices hold one contiguous block of the batch (train.py asks
  the mesh instead: `sharding.process_rows`)."""
  if process_count <= 0 or batch_size <= 0 or batch_size % process_count:
    raise ConfigError(f"batch_size={batch_size} is not a positive multiple of the {process_count} processes: "
                      f"set --config.batch_size to a multiple of {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  b = batch_size // process_count
  return np.arange(process_index * b, (process_index + 1) * b)


def make_pretrain_dataset(config, mask_fn: MaskFn, rows: np.ndarray | None = None, start_step: int = 0,
                          source=None) -> grain.IterDataset:
  """Infinite, deterministic pretraining batches of global steps start_step, start_step + 1, ...

  rows: the rows of each global batch this process holds (default: all of them, one process). Each batch:
  {'images': uint8 [b, S, S, C], 'skipped': int32 [b], **masks}, b = len(rows). What a row holds depends
  only on (config, step, row): not on the number of processes, worker processes or threads, nor on where
  the run was resumed.
  """
  batch_size = int(config.batch_size)
  rows = process_rows(batch_size) if rows is None else np.asarray(rows, np.int64)
  if len(rows) == 0 or rows.min() < 0 or rows.max() >= batch_size:
    raise ValueError(f"rows must be non-empty global rows of a batch of {batch_size}")
  size, channels = _image_size(config), _channels(config)
  scale = _pair(config, "crop_scale")
  ratio = _pair(config, "crop_ratio")
  num_workers = int(_data_get(config, "num_workers"))
  prefetch = max(1, int(_data_get(config, "prefetch_buffer")))
  seed = int(config.seed) % 2**32
  group = mask_group_size(mask_fn, batch_size)
  source = make_source(config, str(_data_get(config, "split"))) if source is None else source
  if len(source) == 0:
    raise ConfigError(f"{source} is empty: check --config.data.path / --config.data.split.")
  order = GlobalOrder(len(source), batch_size, seed)

  if isinstance(source, ArraySource):
    # One vectorised gather + crop per batch.
    ds = _LocalBatches(order, rows, start_step).map(
        _CropArrayBatch(source.images, size, scale, ratio, channels, seed, batch_size, rows))
    default_threads = 1
  else:
    # Rows travel alone; the map opens each file (image folders: decoding only what the crop needs).
    if isinstance(source, EncodedImages):
      crop = _DecodeCropExample(source, size, scale, ratio, channels, bool(_data_get(config, "jpeg_draft")),
                                seed)
    else:
      crop = _CropExample(source, size, scale, ratio, channels, seed)
    ds = _LocalRows(order, rows, start_step).map(crop).batch(len(rows), drop_remainder=True, batch_fn=_stack_batch)
    default_threads = max(1, min(16, (os.cpu_count() or 1) // max(1, num_workers)))
  buckets = context_buckets(config.mask, mask_fn) if hasattr(config, "mask") else ()
  ds = ds.map(_AddMasks(mask_fn, group, rows, seed, buckets, batch_size))
  threads = int(_data_get(config, "read_threads"))
  threads = default_threads if threads <= 0 else threads
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


def _eval_example(source, index: int, size: int, channels: int) -> tuple[np.ndarray, int]:
  """(center-resized uint8 image [size, size, channels], label) of one file-backed example."""
  if isinstance(source, EncodedImages):
    arr, label, _ = source.load(int(index), draft_size=size)
  else:
    record = source[int(index)]
    arr, label = record["image"], int(record["label"])
  arr = _to_channels(arr, 1 if arr.shape[-1] == 1 else 3)
  return _to_channels(center_resize(arr, size), channels), label


def make_eval_dataset(source, indices: np.ndarray, size: int, channels: int, batch_size: int,
                      threads: int | None = None) -> grain.IterDataset:
  """Batches {'images' uint8 [b, S, S, C], 'labels' int32 [b]} of source[indices] in order, center-resized,
  read ahead by `threads` threads (the last batch may be shorter). Memory: a few batches, whatever len(indices)."""
  indices = np.asarray(indices, np.int64)
  threads = max(1, min(16, os.cpu_count() or 1)) if threads is None else threads
  if isinstance(source, ArraySource):  # one vectorised resize per batch
    starts = grain.MapDataset.range(0, len(indices), batch_size)

    def batch(start):
      idx = indices[start:start + batch_size]
      return {"images": _to_channels(_resize_full_batched(source.images[idx], size), channels),
              "labels": source.labels[idx]}
    ds = starts.map(batch)
  else:
    def one(k):
      image, label = _eval_example(source, indices[k], size, channels)
      return {"images": image, "labels": np.int32(label)}
    ds = grain.MapDataset.range(len(indices)).map(one).batch(batch_size)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))


def load_eval_arrays(config, split: str, max_examples: int | None = None,
                     source=None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, S, S, C], labels int32 [N]) of a labelled split (or of `source`, already made),
  center-resized to data.image_size."""
  size, channels = _image_size(config), _channels(config)
  source = make_source(config, split) if source is None else source
  idx = _eval_indices(len(source), max_examples)
  if isinstance(source, ArraySource):
    images = _resize_full_batched(source.images[idx], size)
    return _to_channels(images, channels), source.labels[idx]

  images = np.empty((len(idx), size, size, channels), np.uint8)
  labels = np.empty((len(idx),), np.int32)

  def one(k: int):
    images[k], labels[k] = _eval_example(source, idx[k], size, channels)

  threads = max(1, min(16, os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for _ in pool.map(one, range(len(idx))):
      pass
  return images, labels
