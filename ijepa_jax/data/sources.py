"""Random-access data sources: Fashion-MNIST (gzipped IDX files), synthetic arrays, ImageNet-style image
folders, their record shards (ijepa_jax.prepare) and TFDS array_record datasets, `make_source` (config.data.source -> source), the config.data
accessors and the image-mode conversions the sources need.

Each source has `len()` and `source[i] -> {'image': uint8 [h, w, c], 'label': int32, 'skipped': int32}`.
"""
from __future__ import annotations

import abc
import gzip
import io
import json
import logging
import math
import os
import struct
from typing import Any

import numpy as np
from PIL import Image

from ijepa_jax import defaults, storage
from ijepa_jax.data.transforms import _as_array, _draft_factor, _sample_crop_box
from ijepa_jax.errors import ConfigError

_log = logging.getLogger(__name__)

SOURCES = ("fashion_mnist", "image_folder", "records", "tfds", "synthetic")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
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


# ---------------------------------------------------------------------------------------------- image modes
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


# ---------------------------------------------------------------------------------------------- JPEG decoding
try:  # libjpeg-turbo without Pillow's per-image overhead: ~1.4x faster decodes (experiments/results/input_pipeline.md)
  import simplejpeg as _simplejpeg
except ImportError:  # Pillow decodes the same pixels, slower
  _simplejpeg = None
SIMPLEJPEG_MISSING = ("simplejpeg is not installed: image-folder JPEGs are decoded with Pillow, the same pixels "
                      "~1.4x slower; `pip install simplejpeg==1.9.0` (a dependency of ijepa_jax) for the fast path.")
_said_missing = False


def _simplejpeg_header(blob: bytes) -> tuple[int, int, bool] | None:
  """(height, width, grayscale) of a JPEG that simplejpeg decodes as Pillow does (YCbCr or gray); None for
  anything else (other formats, CMYK/YCCK JPEGs, no simplejpeg), which Pillow decodes."""
  if _simplejpeg is None or blob[:3] != b"\xff\xd8\xff":
    return None
  try:
    height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(blob)
  except ValueError:
    return None  # let Pillow read it (and say why it cannot)
  if colorspace not in ("YCbCr", "Gray") or height < 1 or width < 1:
    return None
  return height, width, colorspace == "Gray"


def _check_pixels(width: int, height: int) -> None:
  """Pillow's decompression-bomb limit, which Image.open applies, for files decoded without it."""
  limit = Image.MAX_IMAGE_PIXELS
  if limit and width * height > 2 * limit:
    raise Image.DecompressionBombError(f"Image size ({width * height} pixels) exceeds limit of {2 * limit} "
                                       f"pixels, could be decompression bomb DOS attack.")


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


class EncodedImages(abc.ABC):
  """A random-access source of encoded image files (JPEG, PNG, ...) with labels, decoded on demand: the
  crop box is drawn from the file's header and only what the crop needs is decoded (`load_crop`).

  Subclasses give `_read(i) -> bytes`, `_name(i)` (for logs), `labels`, `classes`, `fix` (what to set when
  nothing decodes). An undecodable file is replaced by the next decodable one (index+1, +2, ... modulo
  len), and the record's 'skipped' counts the files passed over; each bad file is logged once (per process).
  """
  labels: np.ndarray
  classes: list[str]
  channels: int
  mode: str
  fix: str = "check --config.data.path"

  def _init_decoding(self, channels: int) -> None:
    self.channels = channels
    self.mode = _pil_mode(channels)
    self._bad: set[int] = set()
    global _said_missing
    if _simplejpeg is None and not _said_missing:
      _said_missing = True
      _log.warning(SIMPLEJPEG_MISSING)

  def __len__(self) -> int:
    return len(self.labels)

  @abc.abstractmethod
  def _read(self, index: int) -> bytes:
    """The file's bytes."""

  @abc.abstractmethod
  def _name(self, index: int) -> str:
    """The file's name, for logs."""

  def _decode(self, index: int, draft_size: int | None) -> np.ndarray | None:
    path = self._name(index)
    try:
      with Image.open(io.BytesIO(self._read(index))) as img:
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
    return self._first_decodable(index, lambda j: self._decode(j, draft_size))

  def _first_decodable(self, index: int, decode) -> tuple[np.ndarray, int, int]:
    """(decode(j), label of j, k) for the first j = index + k (cyclically) that decodes: an undecodable
    file is replaced by the next one, and `skipped` counts how many were passed over."""
    n = len(self)
    index = int(index) % n
    for k in range(n):
      j = (index + k) % n
      if j in self._bad:
        continue
      arr = decode(j)
      if arr is not None:
        return arr, int(self.labels[j]), k
    raise ConfigError(f"no image in {self} could be decoded: {self.fix}.")

  def _decode_crop(self, index: int, rng: np.random.Generator, size: int, scale, ratio,
                   draft: bool) -> np.ndarray | None:
    path = self._name(index)
    try:
      blob = self._read(index)
      header = _simplejpeg_header(blob)
      if header is not None:  # libjpeg-turbo through simplejpeg: the same pixels as Pillow's, faster
        height, width, gray = header
        _check_pixels(width, height)
        box = _sample_crop_box(rng, height, width, scale, ratio)  # drawn before anything is decoded
        factor = _draft_factor(box[2], box[3], size) if draft else 1
        # RGBX: Pillow's own layout for RGB, so the decoded buffer becomes a Pillow image without a copy.
        mode = "L" if gray else "RGBX"
        pixels = _simplejpeg.decode_jpeg(blob, "GRAY" if gray else "RGBX", fastdct=False, fastupsample=False,
                                         min_height=-(-height // factor), min_width=-(-width // factor))
        image = Image.frombuffer(mode, (pixels.shape[1], pixels.shape[0]), pixels, "raw", mode, 0, 1)
        out = self._crop_resize(image, width, height, box, size)
        return np.asarray(out)[..., :3] if out.mode == "RGBX" else _as_array(out)
      with Image.open(io.BytesIO(blob)) as img:
        width, height = img.size  # from the header: the crop box is drawn before anything is decoded
        if width < 1 or height < 1:
          raise ValueError("empty image")
        box = _sample_crop_box(rng, height, width, scale, ratio)
        factor = _draft_factor(box[2], box[3], size) if draft and img.format == "JPEG" else 1
        if factor > 1:
          # DCT-domain downscale: libjpeg decodes at 1/factor size, and the crop there still has at least
          # 2 * size pixels each way, so the resize below still shrinks it 2x or more (transforms._DRAFT_MARGIN).
          img.draft(None, (width // factor, height // factor))  # None: keep the mode (exact conversions)
        return _as_array(self._crop_resize(img, width, height, box, size))
    except Exception as e:  # pylint: disable=broad-except
      self._bad.add(index)
      _log.warning("skipping undecodable image %s: %s: %s", path, type(e).__name__, e)
      return None

  def _crop_resize(self, image: Image.Image, width: int, height: int, box, size: int) -> Image.Image:
    """Crop box (top, left, h, w) of a width x height picture, given whole as a Pillow image, possibly decoded
    at a reduced scale; converted to self.mode (RGBX stays, for RGB), resized to size x size."""
    top, left, h, w = box
    sw, sh = image.size
    if (sw, sh) == (width, height):
      outer, inner = (left, top, left + w, top + h), None
    else:  # the box in the smaller image is fractional: crop the enclosing pixels, resize the exact box in them
      sx, sy = sw / width, sh / height
      exact = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
      outer = (math.floor(exact[0]), math.floor(exact[1]), min(sw, math.ceil(exact[2])), min(sh, math.ceil(exact[3])))
      inner = (exact[0] - outer[0], exact[1] - outer[1], min(exact[2], outer[2]) - outer[0],
               min(exact[3], outer[3]) - outer[1])
    crop = image.crop(outer)
    if not (crop.mode == "RGBX" and self.mode == "RGB"):  # RGBX resizes as RGB does; its X is dropped after
      crop = _pil_convert(crop, self.mode)  # crop first: the conversions are per pixel, cheaper on fewer
    return crop.resize((size, size), Image.BILINEAR, box=inner)

  def load_crop(self, index: int, rng: np.random.Generator, size: int, scale=(0.3, 1.0),
                ratio=(3 / 4, 4 / 3), draft: bool = True) -> tuple[np.ndarray, int, int]:
    """(random resized crop uint8 [size, size, channels], label, skipped) for `index`.

    The same crop box distribution and draws as `random_resized_crop(self.load(index)[0], rng, ...)` (the
    box is drawn from the header's size), but a JPEG whose crop spans at least 4 * size pixels each way
    is decoded at 1/2, 1/4 or 1/8 scale (keeping >= 2 * size; libjpeg's DCT scaling) and only the crop
    is converted and resized (draft=False: always the full decode, then pixel for pixel the per-example
    path). Undecodable files are replaced by the next decodable one, drawing a new box from the same rng.
    """
    return self._first_decodable(index, lambda j: self._decode_crop(j, rng, size, scale, ratio, draft))

  def __getitem__(self, index: int) -> dict[str, Any]:
    arr, label, skipped = self.load(index)
    return {"image": arr, "label": np.int32(label), "skipped": np.int32(skipped)}




class ImageFolder(EncodedImages):
  """ROOT/SPLIT/CLASS/**/image files (ImageNet layout): classes (sorted folder names) are label ids and
  files are sorted, so the order is deterministic. Local or gs://."""
  fix = f"set {_IMAGE_FOLDER_HINT}"

  def __init__(self, root: str, split: str, channels: int = 3):
    self.root = root
    self.split = split
    storage.check_readable(root, "--config.data.path")
    self.directory = storage.join(root, split)  # local or gs://
    if not storage.path(self.directory).is_dir():
      raise ConfigError(f"image folder {self.directory} not found: set {_IMAGE_FOLDER_HINT}.")
    classes = sorted(e.name for e in storage.path(self.directory).iterdir() if e.is_dir())
    if not classes:
      raise ConfigError(f"{self.directory} has no class sub-folders: set {_IMAGE_FOLDER_HINT}.")
    names: list[bytes] = []
    labels: list[int] = []
    empty = []
    for label, cls in enumerate(classes):
      found = []
      for rel, filenames in storage.walk_files(storage.join(self.directory, cls)):
        sub = cls if rel == "." else os.path.join(cls, rel)
        found.extend(os.path.join(sub, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
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
    self._init_decoding(channels)
    # Compact, cheaply pickled file list (it travels to every worker process): one byte blob + offsets.
    self._blob = b"".join(names)
    self._offsets = np.cumsum([0] + [len(n) for n in names]).astype(np.int64)
    self.labels = np.asarray(labels, np.int32)

  def path(self, index: int) -> str:
    rel = os.fsdecode(self._blob[self._offsets[index]:self._offsets[index + 1]])
    return f"{self.directory}/{rel}"

  def _name(self, index: int) -> str:
    return self.path(index)

  def _read(self, index: int) -> bytes:
    with storage.open_image(self.path(index)) as f:
      return f.read()

  def __repr__(self) -> str:
    return f"ImageFolder({self.directory!r}, n={len(self)}, classes={len(self.classes)})"


# ---------------------------------------------------------------------------------------------- record shards
# ijepa_jax.prepare writes an image folder's files, unchanged, as ArrayRecord shards: OUT/SPLIT/RECORDS_INDEX
# (written last: the shards' names and record counts, the class names) and OUT/SPLIT/<name>.array_record
# (group_size 1: each record reads alone). A record is RECORD_HEADER (the file's index in the image folder's
# sorted order, its label) followed by the file's bytes. Records keep the image folder's order, so the
# same config draws the same examples, crops and masks from either.
RECORDS_INDEX = "records.json"
RECORDS_FORMAT = "ijepa_jax.records/1"
RECORD_HEADER = struct.Struct("<qi")   # index int64, label int32


def pack_record(index: int, label: int, encoded: bytes) -> bytes:
  return RECORD_HEADER.pack(index, label) + encoded


def unpack_record(record: bytes) -> tuple[int, int, bytes]:
  index, label = RECORD_HEADER.unpack_from(record)
  return index, label, record[RECORD_HEADER.size:]


class RecordShards(EncodedImages):
  """ROOT/SPLIT/*.array_record written by `python -m ijepa_jax.prepare` (local or gs://), read through grain's
  ArrayRecordDataSource: one object read (the index) at start, one ranged read per image after; decoded and
  cropped exactly as the image folder they came from."""

  def __init__(self, root: str, split: str, channels: int = 3):
    import grain  # pylint: disable=g-import-not-at-top
    self.root, self.split = root, split
    self.fix = (f"re-run python -m ijepa_jax.prepare --images=IMAGES --out={root} (it finishes what is missing) or "
                f"set --config.data.path to the folder holding {split}/{RECORDS_INDEX}")
    storage.check_readable(root, "--config.data.path")
    self.directory = storage.join(root, split)
    index = storage.path(self.directory) / RECORDS_INDEX
    if not index.exists():
      raise ConfigError(f"{index} not found: no finished record shards there; {self.fix}.")
    meta = json.loads(index.read_text())
    if meta.get("format") != RECORDS_FORMAT:
      raise ConfigError(f"{index} is not an ijepa_jax record index (format {meta.get('format')!r}): {self.fix}.")
    self.classes = list(meta["classes"])
    self.shards = [(str(f), int(k)) for f, k in meta["shards"]]
    labels = meta.get("labels", [])     # per shard, so evaluation knows every label without reading a record
    if not self.shards or [len(x) for x in labels] != [k for _, k in self.shards]:
      raise ConfigError(f"{index} lists no shards or not one label per record: {self.fix}.")
    self.labels = np.concatenate([np.asarray(x, np.int32) for x in labels])
    # "file[0:k]": the record counts come from the index, so no shard is opened before it is read.
    self._records = grain.sources.ArrayRecordDataSource([f"{self.directory}/{f}[0:{k}]" for f, k in self.shards])
    self._init_decoding(channels)

  def __len__(self) -> int:
    return len(self.labels)

  def _name(self, index: int) -> str:
    return f"record {index} of {self.directory}"

  def _read(self, index: int) -> bytes:
    return unpack_record(self._records[int(index)])[2]

  def __repr__(self) -> str:
    return f"RecordShards({self.directory!r}, n={len(self)}, shards={len(self.shards)}, classes={len(self.classes)})"


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
