"""ijepa_jax.prepare and data.source=records: an image folder as ArrayRecord shards, read like the folder."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from ijepa_jax import data, prepare
from ijepa_jax.errors import ConfigError
from test_data import assert_same, image_tree, jpeg_tree, make_config, mask_fn, take  # noqa: F401  (fixtures)


def _configs(images, records, **kw):
  kw = dict(channels=3, batch_size=6, eval_split="train", **kw)
  return make_config("image_folder", path=str(images), **kw), make_config("records", path=str(records), **kw)


def _same_as_the_folder(images, records, **kw):
  folder_cfg, records_cfg = _configs(images, records, **kw)
  folder, shards = data.make_source(folder_cfg, "train"), data.make_source(records_cfg, "train")
  assert len(shards) == len(folder) and shards.classes == folder.classes
  np.testing.assert_array_equal(shards.labels, folder.labels)
  for i in range(len(folder)):      # decoded records, undecodable ones replaced by the next file as in the folder
    a, b = folder[i], shards[i]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert (a["label"], a["skipped"]) == (b["label"], b["skipped"])
  # The same examples, crops, masks and skipped counts in pretraining, and the same evaluation arrays.
  assert_same(take(iter(data.make_pretrain_dataset(folder_cfg, mask_fn)), 3),
              take(iter(data.make_pretrain_dataset(records_cfg, mask_fn)), 3))
  for x, y in zip(data.load_eval_arrays(folder_cfg, "train"), data.load_eval_arrays(records_cfg, "train")):
    np.testing.assert_array_equal(x, y)


def test_records_read_exactly_like_their_image_folder_and_resume(image_tree, tmp_path):  # noqa: F811
  out = tmp_path / "records"
  index = prepare.prepare_split(str(image_tree), str(out), "train", records_per_shard=4, workers=2, log=lambda *_: 0)
  names = prepare.shard_names("train", 3)                       # 9 files (2 undecodable) in shards of 3
  assert [name for name, _ in index["shards"]] == names and [k for _, k in index["shards"]] == [3, 3, 3]
  _same_as_the_folder(image_tree, out)

  # A killed run: one shard missing, another half-written, no index. The same command writes only those.
  split = out / "train"
  (split / names[1]).unlink()
  (split / prepare.RECORDS_INDEX).unlink()
  (split / f"{names[2]}.tmp-999").write_bytes(b"partial")
  kept = os.stat(split / names[0]).st_mtime_ns, os.stat(split / names[2]).st_mtime_ns
  with pytest.raises(ConfigError, match="no finished record shards there; re-run python -m ijepa_jax.prepare"):
    data.make_source(_configs(image_tree, out)[1], "train")
  prepare.prepare_split(str(image_tree), str(out), "train", records_per_shard=4, workers=2, log=lambda *_: 0)
  assert (os.stat(split / names[0]).st_mtime_ns, os.stat(split / names[2]).st_mtime_ns) == kept
  assert sorted(os.listdir(split)) == sorted([*names, prepare.PLAN, prepare.RECORDS_INDEX])
  _same_as_the_folder(image_tree, out)

  # Another plan into the same --out is refused, naming what differs; nothing is touched.
  before = {p: os.stat(split / p).st_mtime_ns for p in os.listdir(split)}
  with pytest.raises(ConfigError, match="records_per_shard 4 -> 5.*choose another --out"):
    prepare.prepare_split(str(image_tree), str(out), "train", records_per_shard=5, workers=2, log=lambda *_: 0)
  assert {p: os.stat(split / p).st_mtime_ns for p in os.listdir(split)} == before


def test_prepare_cli_into_a_bucket(jpeg_tree, tmp_path, gcs):  # noqa: F811
  """The CLI, with --out in Cloud Storage (the emulator): photo-sized JPEGs, shards of more than 1 MiB (read
  from the bucket through array_record's own Cloud Storage reader), decoded as the folder decodes them: the
  crop box from the header, large crops at a DCT-reduced scale (image_size 64)."""
  out = gcs("records")
  done = subprocess.run([sys.executable, "-m", "ijepa_jax.prepare", f"--images={jpeg_tree}", f"--out={out}",
                         "--splits=train", "--records_per_shard=5", "--workers=2"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "train: 2/2 shards" in done.stdout and "10 records, 2 classes" in done.stdout
  _same_as_the_folder(jpeg_tree, out, image_size=64)
  missing = subprocess.run([sys.executable, "-m", "ijepa_jax.prepare", f"--images={jpeg_tree}", f"--out={out}",
                            "--splits=val"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert missing.returncode == 2 and missing.stderr.startswith("error: image folder") and "val" in missing.stderr
