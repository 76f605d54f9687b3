"""Tests of ijepa_jax.data: Fashion-MNIST IDX loading, crops, determinism, resume, sharding, image folders."""
import io
import json
import logging
import os
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import ConfigDict
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ijepa_jax import data  # pylint: disable=g-import-not-at-top
from ijepa_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top

FMNIST = data.DEFAULT_FASHION_MNIST_PATH


def mask_fn(rng: np.random.Generator, batch_size: int) -> dict:
  """A simple deterministic mask sampler (module level, so worker processes can unpickle it)."""
  return {"context_idx": rng.integers(0, 16, (batch_size, 5)).astype(np.int32),
          "target_idx": rng.integers(0, 16, (batch_size, 2, 3)).astype(np.int32)}


def make_config(source="synthetic", **data_overrides) -> ConfigDict:
  cfg = ConfigDict({
      "seed": 7,
      "batch_size": 8,
      "data": {
          "source": source, "path": FMNIST, "tfds_name": "", "tfds_data_dir": "",
          "split": "train", "eval_split": "test", "image_size": 16, "channels": 1,
          "crop_scale": (0.3, 1.0), "crop_ratio": (3 / 4, 4 / 3), "num_workers": 0,
          "prefetch_buffer": 2, "synthetic_size": 48,
      },
  })
  for k, v in data_overrides.items():
    if k == "batch_size":
      cfg.batch_size = v
    else:
      cfg.data[k] = v
  return cfg


def take(it, n):
  return [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]


def assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------------ Fashion-MNIST
def test_load_fashion_mnist():
  for split, n in (("train", 60000), ("test", 10000)):
    images, labels = data.load_fashion_mnist(FMNIST, split)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).min() > 0 and images.max() == 255


def test_load_fashion_mnist_missing(tmp_path):
  with pytest.raises(ConfigError) as e:
    data.load_fashion_mnist(str(tmp_path), "train")
  msg = str(e.value)
  assert "\n" not in msg and str(tmp_path) in msg
  assert "--config.data.path=" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_load_fashion_mnist_bad_magic(tmp_path):
  import gzip
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
    with gzip.open(tmp_path / name, "wb") as f:
      f.write(b"\x00\x00\x08\x01" + b"\x00" * 64)
  with pytest.raises(ConfigError, match="magic"):
    data.load_fashion_mnist(str(tmp_path), "train")


# ------------------------------------------------------------------------------------ crops
@pytest.mark.parametrize("shape", [(28, 28, 1), (40, 30, 3), (1, 1, 3), (1, 50, 1)])
def test_random_resized_crop(shape):
  image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  a = data.random_resized_crop(image, np.random.default_rng(5), 16, (0.3, 1.0), (3 / 4, 4 / 3))
  b = data.random_resized_crop(image, np.random.default_rng(5), 16, (0.3, 1.0), (3 / 4, 4 / 3))
  assert a.shape == (16, 16, shape[2]) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)


def test_vectorised_crop_matches_pillow():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (32, 28, 24, 3), dtype=np.uint8)
  boxes = data._sample_crop_boxes(rng, 32, 28, 24, (0.3, 1.0), (3 / 4, 4 / 3))
  assert (boxes[:, 2] >= 1).all() and (boxes[:, 0] + boxes[:, 2] <= 28).all()
  assert (boxes[:, 3] >= 1).all() and (boxes[:, 1] + boxes[:, 3] <= 24).all()
  for size in (16, 40):
    fast = data._resize_boxes(images, boxes.astype(np.float64), size, crop_first=True)
    ref = np.stack([np.asarray(Image.fromarray(im).crop((l, t, l + w, t + h)).resize((size, size), Image.BILINEAR))
                    for im, (t, l, h, w) in zip(images, boxes.tolist())])
    assert np.abs(fast.astype(int) - ref).max() <= 1  # Pillow rounds to 8 bits between its two passes
    boxed = data._resize_boxes(images, boxes.astype(np.float64), size)   # Pillow's resize(box=...), for center views
    ref = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR, box=(l, t, l + w, t + h)))
                    for im, (t, l, h, w) in zip(images, boxes.tolist())])
    assert np.abs(boxed.astype(int) - ref).max() <= 1


def test_random_resized_crop_reads_only_the_crop():
  """torchvision's resized_crop is a crop, then a resize: pixels outside the crop change nothing
  (Pillow's resize(box=...) reads past the box's edges). Checked on a 500x600 image -> 224, per example
  and vectorised."""
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (500, 600, 3), dtype=np.uint8)
  top, left, h, w = data.transforms._sample_crop_box(np.random.default_rng(4), 500, 600, (0.3, 1.0), (3 / 4, 4 / 3))
  assert top > 0 and left > 0 and top + h < 500 and left + w < 600   # a box with pixels around it
  outside = image.copy()
  outside[:top], outside[top + h:], outside[:, :left], outside[:, left + w:] = 0, 255, 0, 255
  a = data.random_resized_crop(image, np.random.default_rng(4), 224)
  np.testing.assert_array_equal(a, data.random_resized_crop(outside, np.random.default_rng(4), 224))
  np.testing.assert_array_equal(a, np.asarray(Image.fromarray(image[top:top + h, left:left + w]).resize(
      (224, 224), Image.BILINEAR)))
  box = np.array([[top, left, h, w]], np.float64)
  batched = data._resize_boxes(np.stack([image, outside]), np.repeat(box, 2, 0), 224, crop_first=True)
  np.testing.assert_array_equal(batched[0], batched[1])
  assert np.abs(batched[0].astype(int) - a).max() <= 1
  old = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR, box=(left, top, left + w, top + h)))
  assert (old != a).any()   # the former resize(box=...) differs at the edges


def test_center_resize():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.center_resize(image, 16), image)
  assert data.center_resize(image[:, :10], 8).shape == (8, 8, 3)
  assert data.center_resize(image[..., :1], 24).shape == (24, 24, 1)


# ------------------------------------------------------------------------------------ pipeline
def test_pipeline_deterministic_fashion_mnist():
  cfg = make_config("fashion_mnist", image_size=16, batch_size=16)
  a = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 3)
  b = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 3)
  assert_same(a, b)
  assert a[0]["images"].shape == (16, 16, 16, 1) and a[0]["images"].dtype == np.uint8
  assert a[0]["skipped"].shape == (16,) and a[0]["skipped"].sum() == 0
  assert a[0]["context_idx"].shape == (16, 5) and a[0]["target_idx"].shape == (16, 2, 3)
  assert "label" not in a[0] and "labels" not in a[0]
  assert not np.array_equal(a[0]["images"], a[1]["images"])
  assert not np.array_equal(a[0]["context_idx"], a[1]["context_idx"])
  cfg.seed = 8
  c = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 1)
  assert not np.array_equal(a[0]["images"], c[0]["images"])


def test_pipeline_channels_and_epochs():
  cfg = make_config("synthetic", channels=3, synthetic_size=16, batch_size=8, crop_scale=(1.0, 1.0),
                    crop_ratio=(1.0, 1.0))
  batches = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 6)  # 3 epochs of 16
  assert batches[0]["images"].shape == (8, 16, 16, 3)
  epochs = [np.concatenate([batches[2 * e]["images"], batches[2 * e + 1]["images"]]) for e in range(3)]
  keys = [[im.tobytes() for im in ep] for ep in epochs]
  assert all(len(set(k)) == 16 for k in keys)  # full-image crops: each epoch is a permutation
  assert set(keys[0]) == set(keys[1]) == set(keys[2])
  assert keys[0] != keys[1]  # a new permutation every epoch


def _check_resume(cfg):
  """Batches 3..5 of a stream equal a stream started at step 3: the position is the global step alone."""
  it = iter(data.make_pretrain_dataset(cfg, mask_fn))
  take(it, 3)
  expected = take(it, 3)
  it2 = iter(data.make_pretrain_dataset(cfg, mask_fn, start_step=3))
  got = take(it2, 3)
  for i in (it, it2):
    if hasattr(i, "close"):
      i.close()
  assert_same(expected, got)
  return expected


def test_resume_no_workers():
  _check_resume(make_config("synthetic"))


def test_resume_and_determinism_with_workers():
  flags.FLAGS.mark_as_parsed()
  cfg = make_config("synthetic", num_workers=2)
  expected = _check_resume(cfg)
  # Same batches as without worker processes (batches 3..5 of the sequence).
  reference = take(iter(data.make_pretrain_dataset(make_config("synthetic"), mask_fn)), 6)[3:]
  assert_same(reference, expected)


def test_processes_disjoint():
  n = 64
  cfg = make_config("synthetic", synthetic_size=n, batch_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
  seen = []
  for p in range(2):
    batches = take(iter(data.make_pretrain_dataset(cfg, mask_fn, data.process_rows(8, p, 2))),
                   n // 2 // 4)  # one epoch: 32 examples per process in batches of 4
    assert batches[0]["images"].shape == (4, 16, 16, 1)
    seen.append({im.tobytes() for b in batches for im in b["images"]})
  assert len(seen[0]) == len(seen[1]) == n // 2
  assert not seen[0] & seen[1]
  source = data.make_source(cfg, "train")
  assert seen[0] | seen[1] == {source[i]["image"].tobytes() for i in range(n)}


class _GroupMasks:
  """A sampler whose draws depend on the whole group (as the release's truncation to a group's shortest
  context does): each row holds the group's first draw and its own."""
  group_size = 4

  def __call__(self, rng, batch_size):
    assert batch_size == self.group_size
    shared = rng.integers(0, 1000)
    return {"context_idx": np.stack([np.full(batch_size, shared), rng.integers(0, 1000, batch_size)], 1)}


@pytest.mark.parametrize("source", ["synthetic", "image_folder"])
def test_global_batches_do_not_depend_on_the_process_count(source, image_tree):
  """The global batch of every step (images, crops, masks) is the same however its rows are spread over
  processes: 1 process, 4 contiguous quarters (each half of a mask group), or 2 interleaved sets of rows as a
  mesh can lay them out; so is a run resumed at step 2 on another process count."""
  cfg = make_config(source, path=str(image_tree), channels=3, synthetic_size=40, batch_size=8)
  masks = _GroupMasks()
  whole = take(iter(data.make_pretrain_dataset(cfg, masks)), 4)
  for layout in ([[0, 1], [2, 3], [4, 5], [6, 7]], [[0, 1, 4, 5], [2, 3, 6, 7]]):
    parts = [take(iter(data.make_pretrain_dataset(cfg, masks, rows)), 4) for rows in layout]
    order = np.argsort(np.concatenate(layout))
    joined = [{k: np.concatenate([p[i][k] for p in parts])[order] for k in whole[0]} for i in range(4)]
    assert_same(whole, joined)
    resumed = [take(iter(data.make_pretrain_dataset(cfg, masks, rows, start_step=2)), 2) for rows in layout]
    assert_same(whole[2:], [{k: np.concatenate([p[i][k] for p in resumed])[order] for k in whole[0]}
                            for i in range(2)])
  ctx = whole[0]["context_idx"]
  assert len(set(ctx[:4, 0])) == 1 and len(set(ctx[4:, 0])) == 1 and ctx[0, 0] != ctx[4, 0]  # one draw a group


def test_context_buckets_agree_across_processes():
  """mask.context_buckets with the release's counts: every process draws every group of the step, so all cut
  the contexts to the same bucket, the shortest holding the global batch's longest context; the rows are the
  one-process run's, real tokens first."""
  from ijepa_jax.defaults import base_config
  from ijepa_jax.masks import MultiBlockSampler
  cfg = make_config(batch_size=8)
  cfg.mask = base_config().mask
  cfg.mask.update(dict(counts="release", reference_batch=4, num_context=-1, min_keep=4, context_buckets=(12, 18)))
  sampler = MultiBlockSampler.from_config(cfg.mask, 8)
  assert data.context_buckets(cfg.mask, sampler) == (12, 18, sampler.num_context)
  whole = take(iter(data.make_pretrain_dataset(cfg, sampler)), 6)
  widths = [b["context_idx"].shape[1] for b in whole]
  assert all(w in (12, 18, sampler.num_context) for w in widths) and len(set(widths)) > 1, widths
  for b, w in zip(whole, widths):
    longest = int(b["context_count"].max())
    assert longest <= w and (w == 12 or longest > {18: 12, sampler.num_context: 18}[w])   # the shortest that holds
  layout = [[0, 1, 4, 5], [2, 3, 6, 7]]                                   # each process half of each group
  parts = [take(iter(data.make_pretrain_dataset(cfg, sampler, rows)), 6) for rows in layout]
  order = np.argsort(np.concatenate(layout))
  assert_same(whole, [{k: np.concatenate([p[i][k] for p in parts])[order] for k in whole[0]} for i in range(6)])
  cfg.mask.counts = "fixed"
  with pytest.raises(ConfigError, match="mask.counts=release"):
    data.context_buckets(cfg.mask, MultiBlockSampler.from_config(cfg.mask, 8))


def test_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="batch_size"):
    data.process_rows(9, 0, 2)
  with pytest.raises(ConfigError, match="--config.mask.reference_batch to a divisor of 9"):
    data.make_pretrain_dataset(make_config(batch_size=9), _GroupMasks())
  with pytest.raises(ConfigError, match="fashion_mnist"):
    data.make_source(make_config("nope"), "train")
  with pytest.raises(ConfigError, match="--config.data.tfds_name"):
    data.make_source(make_config("tfds", tfds_name="no_such_dataset_xyz", tfds_data_dir=str(tmp_path)), "train")


def test_load_eval_arrays_fashion_mnist():
  images, labels = data.load_eval_arrays(make_config("fashion_mnist", image_size=28), "test")
  ref_images, ref_labels = data.load_fashion_mnist(FMNIST, "test")
  np.testing.assert_array_equal(images, ref_images)
  np.testing.assert_array_equal(labels, ref_labels)
  images, labels = data.load_eval_arrays(make_config("fashion_mnist", image_size=16, channels=3), "test", 100)
  assert images.shape == (100, 16, 16, 3) and images.dtype == np.uint8 and labels.shape == (100,)
  assert len(np.unique(labels)) == 10


# ------------------------------------------------------------------------------------ image folders
def _jpeg_bytes(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, "JPEG")
  return buf.getvalue()


@pytest.fixture
def image_tree(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "imagenet"
  a, b, empty = root / "train" / "a", root / "train" / "b", root / "train" / "c_empty"
  for d in (a, b, empty):
    d.mkdir(parents=True)
  rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
  Image.new("CMYK", (24, 18), (10, 200, 30, 5)).save(a / "cmyk.jpg")
  (a / "good.JPEG").write_bytes(_jpeg_bytes(rgb))
  Image.fromarray(rng.integers(0, 256, (17, 13), dtype=np.uint8), "L").save(a / "gray.png")
  Image.fromarray(rng.integers(0, 256, (12, 12, 4), dtype=np.uint8), "RGBA").save(a / "rgba.png")
  (b / "corrupt.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
  Image.fromarray((rng.integers(0, 65536, (9, 11))).astype(np.uint16)).save(b / "deep16.png")
  pal = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).convert("P")
  pal.info["transparency"] = 0
  pal.save(b / "pal.png", transparency=0)
  Image.new("RGB", (1, 1), (255, 0, 0)).save(b / "tiny.png")
  big = _jpeg_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
  (b / "trunc.jpg").write_bytes(big[:len(big) // 2])
  (b / "notes.txt").write_text("not an image")
  return root


def test_image_folder_source(image_tree, caplog):
  caplog.set_level(logging.WARNING)
  for channels in (3, 1):
    source = data.make_source(make_config("image_folder", path=str(image_tree), channels=channels), "train")
    assert len(source) == 9 and source.classes == ["a", "b", "c_empty"]
    records = [source[i] for i in range(len(source))]
    for r in records:
      assert r["image"].dtype == np.uint8 and r["image"].ndim == 3 and r["image"].shape[-1] == channels
    assert [int(r["skipped"]) for r in records] == [0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert [int(r["label"]) for r in records] == [0, 0, 0, 0, 1, 1, 1, 1, 0]  # bad files -> next file
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert "corrupt.jpg" in messages and "trunc.jpg" in messages and "c_empty" in messages


def test_image_folder_pipeline(image_tree, caplog):
  caplog.set_level(logging.WARNING)
  cfg = make_config("image_folder", path=str(image_tree), channels=3, batch_size=9, eval_split="train")
  batches = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 2)
  assert batches[0]["images"].shape == (9, 16, 16, 3) and batches[0]["images"].dtype == np.uint8
  assert batches[0]["skipped"].sum() == 2  # the first batch is exactly the first epoch
  assert_same(batches, take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 2))
  assert "corrupt.jpg" in " ".join(r.getMessage() for r in caplog.records)
  images, labels = data.load_eval_arrays(cfg, "train")
  assert images.shape == (9, 16, 16, 3) and labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0]
  images, labels = data.load_eval_arrays(cfg, "train", max_examples=3)
  assert images.shape == (3, 16, 16, 3)


def test_image_folder_missing(tmp_path, image_tree):
  for path, split in ((tmp_path / "nowhere", "train"), (image_tree, "val")):
    with pytest.raises(ConfigError) as e:
      data.make_source(make_config("image_folder", path=str(path)), split)
    assert "--config.data.path=" in str(e.value) and str(path) in str(e.value)
  (tmp_path / "noimg" / "train" / "x").mkdir(parents=True)
  with pytest.raises(ConfigError, match="--config.data.path="):
    data.make_source(make_config("image_folder", path=str(tmp_path / "noimg")), "train")


# ------------------------------------------------------------------------------------ TFDS (faked)
class _FakeTfdsSource:
  """Stands in for tfds.data_source's ArrayRecordDataSource (preparing a real one needs TensorFlow)."""

  class dataset_info:  # pylint: disable=invalid-name
    features = {"image": None, "label": None}

  def __init__(self, n):
    rng = np.random.default_rng(n)
    self.records = [{"image": rng.integers(0, 256, (10 + i, 14, 1), dtype=np.uint8), "label": np.int64(i % 3)}
                    for i in range(n)]

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


def test_tfds_source(monkeypatch):
  import pickle
  import tensorflow_datasets as tfds
  opened = []

  def fake_data_source(name, split, data_dir=None, download=True):
    assert not download  # never download / prepare from the training process
    opened.append((name, split, data_dir))
    return _FakeTfdsSource({"train": 10, "test": 6}[split])

  monkeypatch.setattr(tfds, "data_source", fake_data_source)
  cfg = make_config("tfds", tfds_name="fake", tfds_data_dir="/data/tfds", channels=3, batch_size=5)
  source = data.make_source(cfg, "train")
  assert len(source) == 10 and opened[-1] == ("fake", "train", "/data/tfds")
  record = source[4]
  assert record["image"].shape == (14, 14, 3) and record["label"] == 1 and record["skipped"] == 0
  clone = pickle.loads(pickle.dumps(source))  # what worker processes get: reopened lazily
  np.testing.assert_array_equal(clone[4]["image"], record["image"])
  batches = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 2)
  assert batches[0]["images"].shape == (5, 16, 16, 3)
  images, labels = data.load_eval_arrays(cfg, "test")
  assert images.shape == (6, 16, 16, 3) and labels.tolist() == [0, 1, 2, 0, 1, 2]
  assert "tensorflow" not in sys.modules


def test_image_folder_very_large_images(tmp_path, monkeypatch, caplog):
  caplog.set_level(logging.WARNING)
  cls = tmp_path / "root" / "train" / "a"
  cls.mkdir(parents=True)
  Image.new("RGB", (3000, 2000), (200, 10, 10)).save(cls / "big.jpg", quality=50)
  Image.new("RGB", (8, 8), (0, 0, 255)).save(cls / "small.png")
  source = data.make_source(make_config("image_folder", path=str(tmp_path / "root"), channels=3), "train")
  assert source[0]["image"].shape == (2000, 3000, 3) and int(source[0]["skipped"]) == 0
  arr, _, _ = source.load(0, draft_size=64)               # evaluation decodes JPEGs at reduced size
  assert 64 <= min(arr.shape[:2]) < 2000
  # Beyond Pillow's decompression-bomb limit an image is skipped and counted, not decoded.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
  source = data.make_source(make_config("image_folder", path=str(tmp_path / "root"), channels=3), "train")
  record = source[0]
  assert int(record["skipped"]) == 1 and record["image"].shape == (8, 8, 3)
  assert "DecompressionBombError" in " ".join(r.getMessage() for r in caplog.records)


def test_training_on_a_damaged_image_folder_reports_the_skipped_files(image_tree, tmp_path, capsys):
  sys.path.insert(0, os.path.dirname(__file__))
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from ijepa_jax import train  # pylint: disable=g-import-not-at-top
  c = tiny_config(batch_size=9, total_steps=2, **{"data.source": "image_folder", "data.path": str(image_tree),
                                                 "data.mean": (0.5,), "data.std": (0.25,)})
  train.train_and_evaluate(c, str(tmp_path / "run"))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  out = capsys.readouterr().out
  assert rows[-1]["skipped_images"] == 4   # two bad files in each epoch of 9 images
  assert "Finished at step 2 of 2" in out and "4 undecodable image(s) replaced by the next file" in out


# ------------------------------------------------------------------------------------ JPEG decode at the crop's scale
def _photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """uint8 [h, w, 3] with a natural image's 1/f amplitude spectrum (white noise would be a worst case no
  photo is: all its energy at the frequencies DCT scaling drops)."""
  fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
  f = np.sqrt(fx ** 2 + fy ** 2)
  f[0, 0] = 1.0
  spec = rng.standard_normal((3, h, w // 2 + 1)) + 1j * rng.standard_normal((3, h, w // 2 + 1))
  x = np.fft.irfft2(spec / f, s=(h, w)).transpose(1, 2, 0)
  x = (x - x.mean()) / x.std()
  return np.clip(128 + 48 * x, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
  """Photo-like JPEGs of several sizes (some large enough for DCT scaling at image_size 64), one grayscale,
  one corrupt file."""
  rng = np.random.default_rng(1)
  root = tmp_path_factory.mktemp("jpegs") / "imagenet"
  for c in ("a", "b"):
    (root / "train" / c).mkdir(parents=True)
  sizes = [(600, 800), (375, 500), (900, 700), (130, 90), (1000, 1000), (64, 300), (500, 333), (700, 1200)]
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(_photo_like(rng, h, w)).save(root / "train" / "ab"[i % 2] / f"{i}.jpg", quality=90)
  Image.fromarray(_photo_like(rng, 520, 610)[..., 0], "L").save(root / "train" / "a" / "gray.jpg", quality=90)
  (root / "train" / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  return root


def test_draft_factor():
  assert data._draft_factor(447, 1000, 224) == 1      # the crop keeps >= 2 x the output size, either axis
  assert data._draft_factor(896, 896, 224) == 2 and data._draft_factor(895, 1800, 224) == 1
  assert data._draft_factor(1800, 3600, 224) == 4 and data._draft_factor(3584, 3584, 224) == 8
  assert data._draft_factor(9000, 9000, 224) == 8     # libjpeg scales by 1/8 at most


@pytest.mark.parametrize("channels", [3, 1])
def test_load_crop_same_boxes_as_the_full_decode(jpeg_tree, channels):
  """The crop box comes from the header with the same draws as cropping the decoded image: without DCT
  scaling the crop is pixel for pixel the per-example path's, and the rng has consumed the same draws."""
  source = data.make_source(make_config("image_folder", path=str(jpeg_tree), channels=channels), "train")
  for i in range(len(source)):
    for seed in range(3):
      rng_a, rng_b = np.random.default_rng([seed, i]), np.random.default_rng([seed, i])
      got, label, skipped = source.load_crop(i, rng_a, 64, draft=False)
      image, label_ref, skipped_ref = source.load(i)
      want = data.random_resized_crop(image, rng_b, 64)
      np.testing.assert_array_equal(got, want)
      assert (label, skipped) == (label_ref, skipped_ref)
      assert rng_a.random() == rng_b.random()  # the same number of draws


def test_load_crop_dct_scaled_close_to_the_full_decode(jpeg_tree):
  """With DCT scaling the crops differ from the full decode's by less than changing the resize filter
  (BILINEAR -> BICUBIC, both standard choices) does: no more than a choice the release could have made
  either way. Bound: mean |difference| over all scaled crops <= that between the two filters, below 2 of
  255 levels, and no crop's mean above 4 (a margin of 1 instead of 2 breaks the first bound)."""
  source = data.make_source(make_config("image_folder", path=str(jpeg_tree), channels=3), "train")
  scaled, filters, n_scaled = [], [], 0
  for i in range(len(source)):
    for seed in range(4):
      rng = np.random.default_rng([seed, i])
      image = source.load(i)[0]
      top, left, h, w = data._sample_crop_box(np.random.default_rng([seed, i]), *image.shape[:2], (0.3, 1.0),
                                              (3 / 4, 4 / 3))
      if data._draft_factor(h, w, 64) == 1:
        continue
      n_scaled += 1
      got = source.load_crop(i, rng, 64)[0].astype(np.float64)
      crop = Image.fromarray(image[top:top + h, left:left + w])
      bilinear = np.asarray(crop.resize((64, 64), Image.BILINEAR), np.float64)
      bicubic = np.asarray(crop.resize((64, 64), Image.BICUBIC), np.float64)
      scaled.append(np.abs(got - bilinear).mean())
      filters.append(np.abs(bicubic - bilinear).mean())
  assert n_scaled >= 10, n_scaled  # the fixture's large images do get scaled
  assert np.mean(scaled) <= np.mean(filters), (np.mean(scaled), np.mean(filters))
  assert np.mean(scaled) < 2.0 and max(scaled) < 4.0, scaled


def test_load_crop_skips_and_counts_corrupt_files(jpeg_tree, caplog):
  caplog.set_level(logging.WARNING)
  source = data.make_source(make_config("image_folder", path=str(jpeg_tree), channels=3), "train")
  bad = [i for i in range(len(source)) if source.path(i).endswith("corrupt.jpg")][0]
  image, label, skipped = source.load_crop(bad, np.random.default_rng(0), 32)
  assert image.shape == (32, 32, 3) and skipped == 1 and label == int(source.labels[(bad + 1) % len(source)])
  assert "corrupt.jpg" in " ".join(r.getMessage() for r in caplog.records)


def test_jpeg_pipeline_matches_the_per_example_crops(jpeg_tree):
  """jpeg_draft=False: the image-folder pipeline's batches are those of cropping each decoded image
  (grain's per-example path over the source); with DCT scaling, the same masks and skipped counts."""
  from ijepa_jax.data import pipeline
  cfg = make_config("image_folder", path=str(jpeg_tree), channels=3, batch_size=5, image_size=64, jpeg_draft=False)
  got = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 4)
  source = data.make_source(cfg, "train")
  order, crop = data.GlobalOrder(len(source), 5, cfg.seed), pipeline._CropExample(source, 64, (0.3, 1.0),
                                                                                   (3 / 4, 4 / 3), 3, cfg.seed)
  add_masks = pipeline._AddMasks(mask_fn, 5, np.arange(5), cfg.seed)
  expected = []
  for step in range(4):
    rows = [crop.map({"step": step, "row": r, "index": int(order.indices(step, [r])[0])}) for r in range(5)]
    expected.append(add_masks.map(pipeline._stack_batch(rows)))
  assert_same(got, expected)
  assert sum(int(b["skipped"].sum()) for b in got) >= 1  # the corrupt file was drawn and counted
  cfg.data.jpeg_draft = True
  drafted = take(iter(data.make_pretrain_dataset(cfg, mask_fn)), 4)
  for a, b in zip(got, drafted):
    for k in ("skipped", "context_idx", "target_idx"):
      np.testing.assert_array_equal(a[k], b[k])
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).mean() < 2.0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_jpeg_image_folder(jpeg_tree, num_workers):
  """Exact resume on JPEG files: the same images, crops and masks after restoring the iterator, with or
  without worker processes, and the same batches either way."""
  flags.FLAGS.mark_as_parsed()
  cfg = make_config("image_folder", path=str(jpeg_tree), channels=3, batch_size=4, image_size=32,
                    num_workers=num_workers)
  expected = _check_resume(cfg)
  serial = make_config("image_folder", path=str(jpeg_tree), channels=3, batch_size=4, image_size=32)
  reference = take(iter(data.make_pretrain_dataset(serial, mask_fn)), 6)[3:]
  assert_same(reference, expected)


def test_simplejpeg_and_pillow_decode_the_same_crops(jpeg_tree, monkeypatch, caplog):
  """The fast decoder (simplejpeg, libjpeg-turbo) and the fallback (Pillow) give the same crops, with and
  without DCT scaling, so the pipeline's output does not depend on which is installed; without simplejpeg
  an image folder says once how to get it."""
  from ijepa_jax.data import encoded
  pytest.importorskip("simplejpeg")

  def crops():
    out = {}
    for channels in (3, 1):
      source = data.make_source(make_config("image_folder", path=str(jpeg_tree), channels=channels), "train")
      for i in range(len(source)):
        for seed in range(3):
          for draft in (True, False):
            out[channels, i, seed, draft] = source.load_crop(i, np.random.default_rng([seed, i]), 64, draft=draft)
    return out

  fast = crops()
  monkeypatch.setattr(encoded, "_simplejpeg", None)
  monkeypatch.setattr(encoded, "_said_missing", False)
  caplog.set_level(logging.WARNING)
  slow = crops()
  assert [r.getMessage() for r in caplog.records].count(encoded.SIMPLEJPEG_MISSING) == 1
  assert "pip install simplejpeg==" in encoded.SIMPLEJPEG_MISSING
  assert fast.keys() == slow.keys()
  for key, (image, label, skipped) in fast.items():
    np.testing.assert_array_equal(image, slow[key][0], err_msg=str(key))
    assert (label, skipped) == slow[key][1:]
  source = data.make_source(make_config("image_folder", path=str(jpeg_tree), channels=3), "train")
  scaled = sum(data._draft_factor(*_crop_extent(source, i, seed), 64) > 1 for i in range(len(source))
               for seed in range(3))
  assert scaled >= 2  # DCT-scaled decodes were among those compared


def _crop_extent(source, i, seed):
  image = source.load(i)[0]
  return data._sample_crop_box(np.random.default_rng([seed, i]), *image.shape[:2], (0.3, 1.0), (3 / 4, 4 / 3))[2:]
