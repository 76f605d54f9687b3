"""Random-access data sources: `make_source` (config.data.source -> source), the config.data accessors, and the
array sources (Fashion-MNIST's gzipped IDX files, synthetic arrays) and TFDS array_record datasets; the
encoded-image sources (image folders, record shards) are in encoded.py.

Each source has `len()` and `source[i] -> {'image': uint8 [h, w, c], 'label': int32, 'skipped': int32}`.
"""
from __future__ import annotations

import gzip
import struct
from typing import Any

import numpy as np

from ijepa_jax import defaults, storage
from ijepa_jax.data.encoded import _IMAGE_FOLDER_HINT, ImageFolder, RecordShards
from ijepa_jax.data.transforms import _to_channels
from ijepa_jax.errors import ConfigError

SOURCES = ("fashion_mnist", "image_folder", "records", "tfds", "synthetic")
DEFAULT_FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


# ---------------------------------------------------------------------------------------------- config
def _data_get(config, name: str):
  """config.data's `name`, or defaults.py's value where a partial config (tests, benchmarks) lacks it."""
  return defaults.get(config.data, f"data.{name}")


def _channels(config) -> int:
  c = int(_data_get(config, "channels"))
  if c not in (1, 3):
    raise ConfigError(f"data.channels={c} is not supported: set --config.data.channels=1 or 3.")
  return c


def _image_size(config) -> int:
  s = int(_data_get(config, "image_size"))
  if s <= 0:
    raise ConfigError(f"data.image_size={s} must be positive: set --config.data.image_size=224 (for example).")
  return s


def _pair(config, name: str) -> tuple[float, float]:
  value = tuple(float(v) for v in _data_get(config, name))
  if len(value) != 2 or not (0 < value[0] <= value[1]):
    raise ConfigError(f"data.{name}={value} must be two numbers 0 < lo <= hi: set --config.data.{name}=...")
  return value


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
  if not storage.path(path).is_file():
    raise ConfigError(
        f"Fashion-MNIST file {path} not found: install it with `apt-get install dataset-fashion-mnist` "
        f"or point --config.data.path=... at the folder holding the gzipped IDX files.")
  raw = storage.path(path).read_bytes()
  if path.endswith(".gz"):
    raw = gzip.decompress(raw)
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
  storage.check_readable(path, "--config.data.path")
  image_file, label_file = (storage.join(path, f) for f in _FASHION_FILES[split])
  images = _read_idx(image_file, _IDX_IMAGES_MAGIC, 3)
  labels = _read_idx(label_file, _IDX_LABELS_MAGIC, 1)
  if images.shape[0] != labels.shape[0]:
    raise ConfigError(f"{image_file} has {images.shape[0]} images but {label_file} has {labels.shape[0]} labels: "
                      f"reinstall dataset-fashion-mnist or fix --config.data.path.")
  return np.ascontiguousarray(images[..., None]), labels.astype(np.int32)


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


class TfdsSource:
  """A prepared TFDS dataset (array_record format) through `tfds.data_source`; decodes with Pillow."""

  def __init__(self, name: str, split: str, data_dir: str | None, channels: int = 3):
    self.name, self.split, self.data_dir, self.channels = name, split, data_dir or None, channels
    if self.data_dir and storage.is_remote(self.data_dir):
      storage.check_readable(self.data_dir, "--config.data.tfds_data_dir")
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
  source = str(_data_get(config, "source"))
  channels = _channels(config)
  if source == "fashion_mnist":
    return FashionMnistSource(str(getattr(config.data, "path", None) or DEFAULT_FASHION_MNIST_PATH), split)
  if source == "image_folder":
    path = _data_get(config, "path")
    if not path:
      raise ConfigError(f"data.path is empty: set {_IMAGE_FOLDER_HINT}.")
    return ImageFolder(str(path), split, channels)
  if source == "records":
    path = _data_get(config, "path")
    if not path:
      raise ConfigError("data.path is empty: set --config.data.path to the --out of python -m ijepa_jax.prepare.")
    return RecordShards(str(path), split, channels)
  if source == "tfds":
    name = _data_get(config, "tfds_name")
    if not name:
      raise ConfigError("data.tfds_name is empty: set --config.data.tfds_name=imagenet2012 (for example) "
                        "and --config.data.tfds_data_dir=...")
    return TfdsSource(str(name), split, _data_get(config, "tfds_data_dir"), channels)
  if source == "synthetic":
    return SyntheticSource(int(_data_get(config, "synthetic_size")), _image_size(config), channels,
                           seed=int(getattr(config, "seed", 0)) + (0 if split == _data_get(config, "split")
                                                                    else 1))
  raise ConfigError(f"data.source={source!r} is not one of {SOURCES}: set --config.data.source=fashion_mnist "
                    f"(or image_folder, records, tfds, synthetic).")
