"""Input pipelines: Fashion-MNIST (IDX files), ImageNet-style image folders, TFDS array_record, synthetic.

Pretraining (`make_pretrain_dataset`) is a grain pipeline

  source -> seed(config.seed) -> shuffle (new permutation each epoch) -> repeat forever
         -> [process_index::process_count] -> random resized crop -> batch -> masks -> to_iter_dataset
         (-> mp_prefetch when data.num_workers > 0)

Every random draw comes from grain's `random_map` generators, which are seeded from (seed, position of
the transform, element index), so a config always yields the same batches, whatever the number of worker
processes, and the iterator's state (`get_state()`, a small JSON-able dict) restores the exact position.

In-memory sources of equal-size images (Fashion-MNIST, synthetic) skip the per-example stage: the
pipeline batches example *indices* and a single vectorised step gathers, crops and resizes the whole
batch (separable bilinear weight matrices, the same filter as Pillow's BILINEAR resize). File-backed
sources (image folders, TFDS) decode and crop per example (Pillow), batched afterwards.

Batches are numpy dicts: {'images': uint8 [b, S, S, C], 'skipped': int32 [b] (undecodable files replaced
to produce each example; sum it for the total), **mask_fn(rng, b)} with b = batch_size // process_count.
No TensorFlow is imported (TFDS is only used through `tfds.data_source`, which decodes with Pillow).
"""
from __future__ import annotations

import concurrent.futures
import gzip
import logging
import math
import os
import struct
import sys
import threading
from typing import Any, Callable, Sequence

import grain
import numpy as np
from PIL import Image

from ijepa_jax.errors import ConfigError

_log = logging.getLogger(__name__)

SOURCES = ("fashion_mnist", "image_folder", "tfds", "synthetic")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
_SHUFFLE_TAG = 0x1E9A  # separates the shuffle's random stream from other uses of config.seed

MaskFn = Callable[[np.random.Generator, int], "dict[str, np.ndarray]"]


# ---------------------------------------------------------------------------------------------- config
def _data_get(config, name: str, default=None):
  data = config.data
  try:
    value = data.get(name, default)
  except AttributeError:  # a plain object
    value = getattr(data, name, default)
  return default if value is None else value


def _channels(config) -> int:
  c = int(_data_get(config, "channels", 3))
  if c not in (1, 3):
    raise ConfigError(f"data.channels={c} is not supported: set --config.data.channels=1 or 3.")
  return c


def _image_size(config) -> int:
  s = int(_data_get(config, "image_size", 224))
  if s <= 0:
    raise ConfigError(f"data.image_size={s} must be positive: set --config.data.image_size=224 (for example).")
  return s


def _pair(config, name: str, default: tuple[float, float]) -> tuple[float, float]:
  value = tuple(float(v) for v in _data_get(config, name, default))
  if len(value) != 2 or not (0 < value[0] <= value[1]):
    raise ConfigError(f"data.{name}={value} must be two numbers 0 < lo <= hi: set --config.data.{name}=...")
  return value


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
  if not os.path.isfile(path):
    raise ConfigError(
        f"Fashion-MNIST file {path} not found: install it with `apt-get install dataset-fashion-mnist` "
        f"or point --config.data.path=... at the folder holding the gzipped IDX files.")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 + 4 * ndim:
    raise ConfigError(f"{path} is not an IDX file (too short): reinstall dataset-fashion-mnist or fix --config.data.path.")
  got_magic = struct.unpack(">i", raw[:4])[0]
  if got_magic != magic:
    raise ConfigError(f"{path} has IDX magic number {got_magic}, expected {magic}: it is not the right file; "
                      f"fix --config.data.path or reinstall dataset-fashion-mnist.")
  dims = struct.unpack(">" + "i" * ndim, raw[4:4 + 4 * ndim])
  offset = 4 + 4 * ndim
  count = int(np.prod(dims))
  if len(raw) - offset != count:
    raise ConfigError(f"{path} holds {len(raw) - offset} data bytes, its header says {count}: the file is "
                      f"truncated; reinstall dataset-fashion-mnist or fix --config.data.path.")
  return np.frombuffer(raw, dtype=np.uint8, count=count, offset=offset).reshape(dims)


def load_fashion_mnist(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 28, 28, 1], labels int32 [N]) of split 'train' (60000) or 'test' (10000)."""
  if split not in _FASHION_FILES:
    raise ConfigError(f"Fashion-MNIST has splits {tuple(_FASHION_FILES)}, not {split!r}: "
                      f"set --config.data.split=train / --config.data.eval_split=test.")
  image_file, label_file = (os.path.join(path, f) for f in _FASHION_FILES[split])
  images = _read_idx(image_file, _IDX_IMAGES_MAGIC, 3)
  labels = _read_idx(label_file, _IDX_LABELS_MAGIC, 1)
  if images.shape[0] != labels.shape[0]:
    raise ConfigError(f"{image_file} has {images.shape[0]} images but {label_file} has {labels.shape[0]} labels: "
                      f"reinstall dataset-fashion-mnist or fix --config.data.path.")
  return np.ascontiguousarray(images[..., None]), labels.astype(np.int32)


# ---------------------------------------------------------------------------------------------- image helpers
def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [..., c] -> [..., channels] (c in {1, 3, 4}); RGB -> L with ITU-R 601-2 luma (as Pillow)."""
  c = images.shape[-1]
  if c == channels:
    return images
  if c == 4:
    images, c = images[..., :3], 3
    if channels == 3:
      return images
  if c == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if c == 3 and channels == 1:
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.floor(luma + 0.5), 0, 255).astype(np.uint8)[..., None]
  raise ValueError(f"cannot convert {c} channels to {channels}")


def _pil_mode(channels: int) -> str:
  return "L" if channels == 1 else "RGB"


def _pil_convert(img: Image.Image, mode: str) -> Image.Image:
  """Any Pillow mode (1, L, LA, P, RGB, RGBA, CMYK, YCbCr, I, I;16*, F, ...) -> mode 'L' or 'RGB', loaded."""
  if img.mode.startswith("I;16") or img.mode in ("I", "F"):
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
      arr8 = (arr.astype(np.uint32) + 128) // 257  # 16-bit -> 8-bit, rounded
    else:
      arr = arr.astype(np.float64)
      arr8 = arr / 257.0 if arr.size and arr.max() > 255 else arr  # 32-bit modes holding 16-bit data
      arr8 = np.floor(arr8 + 0.5)
    img = Image.fromarray(np.clip(arr8, 0, 255).astype(np.uint8), "L")
  elif img.mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")
  if img.mode != mode:
    img = img.convert(mode)
  else:
    img.load()
  return img


def _as_array(img: Image.Image) -> np.ndarray:
  arr = np.asarray(img)
  return arr[..., None] if arr.ndim == 2 else arr


def _pil_image(image: np.ndarray) -> Image.Image:
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"expected an image [h, w, 1 or 3], got shape {image.shape}")
  image = np.ascontiguousarray(image, dtype=np.uint8)
  return Image.fromarray(image[..., 0], "L") if image.shape[-1] == 1 else Image.fromarray(image, "RGB")


def _sample_crop_box(rng: np.random.Generator, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
  """torchvision RandomResizedCrop.get_params: (top, left, h, w)."""
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  u = rng.random((10, 2))
  for t in range(10):
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[t, 0])
    aspect = math.exp(log_lo + (log_hi - log_lo) * u[t, 1])
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  return _fallback_box(height, width, ratio)


def _fallback_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop: uint8 [h, w, c] (c = 1 or 3) -> uint8 [size, size, c], bilinear."""
  height, width = image.shape[:2]
  top, left, h, w = _sample_crop_box(rng, height, width, scale, ratio)
  out = _pil_image(image).resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
  return _as_array(out)


def _center_box(width: float, height: float) -> tuple[float, float, float, float]:
  side = min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  return left, top, left + side, top + side


def center_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Evaluation view: resize the shorter side to `size`, center crop size x size (identity when already so)."""
  height, width = image.shape[:2]
  if height == width == size:
    return np.asarray(image, dtype=np.uint8)
  out = _pil_image(image).resize((size, size), Image.BILINEAR, box=_center_box(width, height))
  return _as_array(out)


# Vectorised crop+resize for batches of equal-size images: out = Wy @ image @ Wx^T per example, with the
# weights of Pillow's BILINEAR resample (a triangle filter widened by the scale factor when downscaling).
def _resize_weights(start: np.ndarray, extent: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
  """[b] box starts/extents (input pixels) -> [b, out_size, in_size] float32 row-normalised weights."""
  start = np.asarray(start, np.float32)
  scale = np.asarray(extent, np.float32) / np.float32(out_size)  # [b]
  inv_fs = 1.0 / np.maximum(scale, np.float32(1.0))
  centers = start[:, None] + (np.arange(out_size, dtype=np.float32) + 0.5)[None, :] * scale[:, None]  # [b, out]
  pixels = np.arange(in_size, dtype=np.float32) + 0.5
  x = (pixels[None, None, :] - centers[:, :, None]) * inv_fs[:, None, None]
  w = np.maximum(np.float32(0.0), 1.0 - np.abs(x, out=x), out=x)
  total = w.sum(-1, keepdims=True)
  w /= np.where(total > 0, total, np.float32(1.0))
  return w


def _resize_boxes(images: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
  """images uint8 [b, H, W, C], boxes float [b, 4] = (top, left, h, w) -> uint8 [b, size, size, C]."""
  b, height, width, c = images.shape
  wy = _resize_weights(boxes[:, 0], boxes[:, 2], height, size)  # [b, S, H]
  wx = _resize_weights(boxes[:, 1], boxes[:, 3], width, size)  # [b, S, W]
  x = images.astype(np.float32)
  t = np.matmul(wy, x.reshape(b, height, width * c)).reshape(b, size, width, c)  # rows
  t = t.transpose(0, 2, 1, 3).reshape(b, width, size * c)  # [b, W, S*C]
  t = np.matmul(wx, t).reshape(b, size, size, c).transpose(0, 2, 1, 3)  # columns: [b, S(x), S(y), C] -> y, x
  return np.ascontiguousarray(np.clip(np.floor(t + 0.5), 0, 255).astype(np.uint8))


def _sample_crop_boxes(rng: np.random.Generator, n: int, height: int, width: int, scale, ratio) -> np.ndarray:
  """Vectorised `_sample_crop_box` for n images of one size: int64 [n, 4] = (top, left, h, w)."""
  u = rng.random((n, 10, 2))
  area = height * width
  target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
  w = np.round(np.sqrt(target_area * aspect)).astype(np.int64)
  h = np.round(np.sqrt(target_area / aspect)).astype(np.int64)
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = np.argmax(ok, axis=1)
  found = ok[np.arange(n), first]
  h, w = h[np.arange(n), first], w[np.arange(n), first]
  pos = rng.random((n, 2))
  top = np.floor(pos[:, 0] * (height - h + 1)).astype(np.int64)
  left = np.floor(pos[:, 1] * (width - w + 1)).astype(np.int64)
  fb = np.array(_fallback_box(height, width, ratio), np.int64)
  boxes = np.stack([top, left, h, w], axis=1)
  return np.where(found[:, None], boxes, fb[None, :])


def _resize_full_batched(images: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
  """center_resize for a stack of equal-size images, vectorised."""
  n, height, width, c = images.shape
  if height == width == size:
    return images
  left, top, right, _ = _center_box(width, height)
  side = right - left
  out = np.empty((n, size, size, c), np.uint8)
  for s in range(0, n, chunk):
    part = images[s:s + chunk]
    boxes = np.tile(np.array([[top, left, side, side]], np.float64), (len(part), 1))
    out[s:s + chunk] = _resize_boxes(part, boxes, size)
  return out


# ---------------------------------------------------------------------------------------------- sources
class ArraySource:
  """Random-access source over in-memory arrays images uint8 [N, h, w, c], labels int32 [N]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if images.ndim != 4 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
      raise ValueError(f"bad arrays: images {images.shape} {images.dtype}, labels {labels.shape}")
    self.images = images
    self.labels = labels.astype(np.int32)
    self._zero = np.int32(0)

  def __len__(self) -> int:
    return self.images.shape[0]

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index) % len(self)
    return {"image": self.images[index], "label": self.labels[index], "skipped": self._zero}

  def __repr__(self) -> str:
    return f"{type(self).__name__}(n={len(self)}, shape={self.images.shape[1:]})"


class FashionMnistSource(ArraySource):
  """Fashion-MNIST split as a random-access source (images [28, 28, 1])."""

  def __init__(self, path: str, split: str):
    super().__init__(*load_fashion_mnist(path, split))


class SyntheticSource(ArraySource):
  """Deterministic random uint8 images and labels in [0, 10): for unit tests only."""

  def __init__(self, size: int, image_size: int, channels: int, seed: int = 0):
    if size <= 0:
      raise ConfigError(f"data.synthetic_size={size} must be positive: set --config.data.synthetic_size=256.")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (size, image_size, image_size, channels), dtype=np.uint8)
    super().__init__(images, rng.integers(0, 10, size).astype(np.int32))


_IMAGE_FOLDER_HINT = ("--config.data.path=/path/to/imagenet whose train/ and val/ folders hold one folder of "
                      "JPEG/PNG files per class")


class ImageFolder:
  """ROOT/SPLIT/CLASS/**/image files (ImageNet layout) as a random-access source, decoded with Pillow.

  Classes (sorted folder names) are label ids; files are sorted, so the order is deterministic. An
  undecodable file is replaced by the next decodable one (index+1, +2, ... modulo len), and the record's
  'skipped' counts the files passed over; each bad file is logged once (per process).
  """

  def __init__(self, root: str, split: str, channels: int = 3):
    self.root = root
    self.split = split
    self.directory = os.path.join(root, split)
    self.channels = channels
    self.mode = _pil_mode(channels)
    if not os.path.isdir(self.directory):
      raise ConfigError(f"image folder {self.directory} not found: set {_IMAGE_FOLDER_HINT}.")
    classes = sorted(e.name for e in os.scandir(self.directory) if e.is_dir())
    if not classes:
      raise ConfigError(f"{self.directory} has no class sub-folders: set {_IMAGE_FOLDER_HINT}.")
    names: list[bytes] = []
    labels: list[int] = []
    empty = []
    for label, cls in enumerate(classes):
      found = []
      cls_dir = os.path.join(self.directory, cls)
      for dirpath, dirnames, filenames in os.walk(cls_dir, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, self.directory)
        found.extend(os.path.join(rel, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        empty.append(cls)
      found.sort()
      names.extend(os.fsencode(f) for f in found)
      labels.extend([label] * len(found))
    if empty:
      _log.warning("%d empty class folder(s) in %s (kept as label ids): %s", len(empty), self.directory,
                   ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else ""))
    if not names:
      raise ConfigError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {self.directory}/CLASS/: "
                        f"set {_IMAGE_FOLDER_HINT}.")
    self.classes = classes
    # Compact, cheaply pickled file list (it travels to every worker process): one byte blob + offsets.
    self._blob = b"".join(names)
    self._offsets = np.cumsum([0] + [len(n) for n in names]).astype(np.int64)
    self.labels = np.asarray(labels, np.int32)
    self._bad: set[int] = set()

  def __len__(self) -> int:
    return len(self.labels)

  def path(self, index: int) -> str:
    rel = os.fsdecode(self._blob[self._offsets[index]:self._offsets[index + 1]])
    return os.path.join(self.directory, rel)

  def _decode(self, index: int, draft_size: int | None) -> np.ndarray | None:
    path = self.path(index)
    try:
      with Image.open(path) as img:
        if draft_size is not None and img.format == "JPEG":
          img.draft(self.mode, (draft_size, draft_size))  # DCT-domain downscale, never below draft_size
        arr = _as_array(_pil_convert(img, self.mode))
      if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError("empty image")
      return arr
    except Exception as e:  # pylint: disable=broad-except
      self._bad.add(index)
      _log.warning("skipping undecodable image %s: %s: %s", path, type(e).__name__, e)
      return None

  def load(self, index: int, draft_size: int | None = None) -> tuple[np.ndarray, int, int]:
    """(image uint8 [h, w, channels], label, skipped) for `index`, replacing undecodable files."""
    n = len(self)
    index = int(index) % n
    for k in range(n):
      j = (index + k) % n
      if j in self._bad:
        continue
      arr = self._decode(j, draft_size)
      if arr is not None:
        return arr, int(self.labels[j]), k
    raise ConfigError(f"no image under {self.directory} could be decoded: set {_IMAGE_FOLDER_HINT}.")

  def __getitem__(self, index: int) -> dict[str, Any]:
    arr, label, skipped = self.load(index)
    return {"image": arr, "label": np.int32(label), "skipped": np.int32(skipped)}

  def __repr__(self) -> str:
    return f"ImageFolder({self.directory!r}, n={len(self)}, classes={len(self.classes)})"


class TfdsSource:
  """A prepared TFDS dataset (array_record format) through `tfds.data_source`; decodes with Pillow."""

  def __init__(self, name: str, split: str, data_dir: str | None, channels: int = 3):
    self.name, self.split, self.data_dir, self.channels = name, split, data_dir or None, channels
    self._ds = None
    ds = self._open()
    self._len = len(ds)
    if self._len == 0:
      raise ConfigError(f"TFDS dataset {name!r} split {split!r} is empty: set --config.data.tfds_name / "
                        f"--config.data.split / --config.data.eval_split.")

  def _open(self):
    if self._ds is None:
      try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        # download=False: never try to download/prepare here (that needs TensorFlow and network access).
        self._ds = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False)
      except Exception as e:  # pylint: disable=broad-except
        msg = " ".join(str(e).split("Available datasets")[0].split())[:300]
        raise ConfigError(
            f"cannot open TFDS dataset {self.name!r} split {self.split!r} (data_dir={self.data_dir}): "
            f"{type(e).__name__}: {msg} -- prepare it in array_record format and set --config.data.tfds_name "
            f"and --config.data.tfds_data_dir.") from None
      features = getattr(getattr(self._ds, "dataset_info", None), "features", None)
      if features is not None and "image" not in features:
        raise ConfigError(f"TFDS dataset {self.name!r} has no 'image' feature (it has {list(features)}): "
                          f"set --config.data.tfds_name to an image dataset.")
    return self._ds

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_ds"] = None  # reopened lazily in each worker process
    return state

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._open()[int(index) % self._len]
    image = np.asarray(record["image"], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    label = record.get("label", -1) if isinstance(record, dict) else -1
    return {"image": _to_channels(image, self.channels), "label": np.int32(label), "skipped": np.int32(0)}

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, n={self._len})"


def make_source(config, split: str):
  """The random-access source of `split` for config.data.source."""
  source = str(_data_get(config, "source", ""))
  channels = _channels(config)
  if source == "fashion_mnist":
    return FashionMnistSource(str(_data_get(config, "path", DEFAULT_FASHION_MNIST_PATH)), split)
  if source == "image_folder":
    path = _data_get(config, "path", "")
    if not path:
      raise ConfigError(f"data.path is empty: set {_IMAGE_FOLDER_HINT}.")
    return ImageFolder(str(path), split, channels)
  if source == "tfds":
    name = _data_get(config, "tfds_name", "")
    if not name:
      raise ConfigError("data.tfds_name is empty: set --config.data.tfds_name=imagenet2012 (for example) "
                        "and --config.data.tfds_data_dir=...")
    return TfdsSource(str(name), split, _data_get(config, "tfds_data_dir", None), channels)
  if source == "synthetic":
    return SyntheticSource(int(_data_get(config, "synthetic_size", 256)), _image_size(config), channels,
                           seed=int(getattr(config, "seed", 0)) + (0 if split == _data_get(config, "split", "train")
                                                                    else 1))
  raise ConfigError(f"data.source={source!r} is not one of {SOURCES}: set --config.data.source=fashion_mnist "
                    f"(or image_folder, tfds, synthetic).")


# ---------------------------------------------------------------------------------------------- transforms
class _CropExample(grain.transforms.RandomMap):
  """Per-example random resized crop: record -> {'images', 'skipped'} (labels dropped)."""

  def __init__(self, size: int, scale, ratio, channels: int):
    self.size, self.scale, self.ratio, self.channels = size, scale, ratio, channels

  def random_map(self, element, rng: np.random.Generator):
    image = random_resized_crop(element["image"], rng, self.size, self.scale, self.ratio)
    return {"images": _to_channels(image, self.channels), "skipped": np.int32(element["skipped"])}


class _CropArrayBatch(grain.transforms.RandomMap):
  """Batch of example indices -> gathered, randomly cropped and resized {'images', 'skipped'}, vectorised."""

  def __init__(self, images: np.ndarray, size: int, scale, ratio, channels: int):
    self.images, self.size, self.scale, self.ratio, self.channels = images, size, scale, ratio, channels

  def random_map(self, indices, rng: np.random.Generator):
    indices = np.asarray(indices, np.int64) % self.images.shape[0]
    images = self.images[indices]
    b, height, width, _ = images.shape
    boxes = _sample_crop_boxes(rng, b, height, width, self.scale, self.ratio)
    out = _resize_boxes(images, boxes.astype(np.float64), self.size)
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
