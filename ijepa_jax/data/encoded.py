"""Sources of encoded image files, decoded on demand: ImageNet-style image folders and their record shards
(written by ijepa_jax.prepare). Each crop box is drawn from the file's header and only what the crop needs is
decoded (JPEGs by simplejpeg where installed, else Pillow: the same pixels).

Each source has `len()` and `source[i] -> {'image': uint8 [h, w, c], 'label': int32, 'skipped': int32}`.
"""
from __future__ import annotations

import abc
import io
import json
import logging
import math
import os
import struct
from typing import Any

import numpy as np
from PIL import Image

from ijepa_jax import storage
from ijepa_jax.data.transforms import _as_array, _draft_factor, _pil_convert, _pil_mode, _sample_crop_box
from ijepa_jax.errors import ConfigError

_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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
