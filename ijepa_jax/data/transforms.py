"""Image transforms: torchvision-style random resized crop and the evaluation center resize (Pillow,
per example), and their vectorised counterparts for batches of equal-size images (separable bilinear
weight matrices, the same filter as Pillow's BILINEAR resize); channel and Pillow-mode conversions.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


# ---------------------------------------------------------------------------------------------- array <-> Pillow
def _as_array(img: Image.Image) -> np.ndarray:
  arr = np.asarray(img)
  return arr[..., None] if arr.ndim == 2 else arr


def _pil_image(image: np.ndarray) -> Image.Image:
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"expected an image [h, w, 1 or 3], got shape {image.shape}")
  image = np.ascontiguousarray(image, dtype=np.uint8)
  return Image.fromarray(image[..., 0], "L") if image.shape[-1] == 1 else Image.fromarray(image, "RGB")


# ---------------------------------------------------------------------------------------------- image modes (channels, Pillow modes)
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


# ---------------------------------------------------------------------------------------------- per-example crops
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


# A JPEG is decoded at 1/f scale only when its crop keeps >= _DRAFT_MARGIN * size pixels each way there, so
# the bilinear resize after it still shrinks by 2x or more and its antialiasing dominates: measured on
# photo-like JPEGs, the crops then differ from the full decode's by less than BILINEAR and BICUBIC resizes
# of the same crop differ (tests/test_data.py); at a margin of 1 they differ by more.
_DRAFT_MARGIN = 2


def _draft_factor(h: int, w: int, size: int) -> int:
  """The largest JPEG DCT scale 1/f (f in 8, 4, 2, 1) at which an h x w crop keeps >= 2 * size pixels each way."""
  for f in (8, 4, 2):
    if h // f >= _DRAFT_MARGIN * size and w // f >= _DRAFT_MARGIN * size:
      return f
  return 1


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop: uint8 [h, w, c] (c = 1 or 3) -> uint8 [size, size, c], bilinear."""
  height, width = image.shape[:2]
  top, left, h, w = _sample_crop_box(rng, height, width, scale, ratio)
  # Crop, then resize, as torchvision's resized_crop: the filter never reads pixels outside the crop
  # (Pillow's resize(box=...) would, at the crop's edges).
  out = _pil_image(image).crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
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


# ---------------------------------------------------------------------------------------------- batched crops
# Vectorised crop+resize for batches of equal-size images: out = Wy @ image @ Wx^T per example, with the
# weights of Pillow's BILINEAR resample (a triangle filter widened by the scale factor when downscaling).
def _resize_weights(start: np.ndarray, extent: np.ndarray, in_size: int, out_size: int,
                    crop_first: bool = False) -> np.ndarray:
  """[b] box starts/extents (input pixels) -> [b, out_size, in_size] float32 row-normalised weights.
  crop_first: only the pixels inside the (integer) box get weight, as when the box is cropped first."""
  start = np.asarray(start, np.float32)
  scale = np.asarray(extent, np.float32) / np.float32(out_size)  # [b]
  inv_fs = 1.0 / np.maximum(scale, np.float32(1.0))
  centers = start[:, None] + (np.arange(out_size, dtype=np.float32) + 0.5)[None, :] * scale[:, None]  # [b, out]
  pixels = np.arange(in_size, dtype=np.float32) + 0.5
  x = (pixels[None, None, :] - centers[:, :, None]) * inv_fs[:, None, None]
  w = np.maximum(np.float32(0.0), 1.0 - np.abs(x, out=x), out=x)
  if crop_first:
    inside = (pixels[None, :] > start[:, None]) & (pixels[None, :] < (start + np.asarray(extent, np.float32))[:, None])
    w *= inside[:, None, :]
  total = w.sum(-1, keepdims=True)
  w /= np.where(total > 0, total, np.float32(1.0))
  return w


def _resize_boxes(images: np.ndarray, boxes: np.ndarray, size: int, crop_first: bool = False) -> np.ndarray:
  """images uint8 [b, H, W, C], boxes float [b, 4] = (top, left, h, w) -> uint8 [b, size, size, C].
  crop_first: the random resized crop's semantics (crop, then resize); else Pillow's resize(box=...)."""
  b, height, width, c = images.shape
  wy = _resize_weights(boxes[:, 0], boxes[:, 2], height, size, crop_first)  # [b, S, H]
  wx = _resize_weights(boxes[:, 1], boxes[:, 3], width, size, crop_first)  # [b, S, W]
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
