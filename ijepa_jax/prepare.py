"""An image folder as ArrayRecord shards, for pods that read their data from a bucket:

  python -m ijepa_jax.prepare --images=/data/imagenet --out=gs://BUCKET/imagenet-records [--splits=train,val]
  python -m ijepa_jax.main ... --config.data.source=records --config.data.path=gs://BUCKET/imagenet-records

Each split's files (IMAGES/SPLIT/CLASS/**, the order `data.source=image_folder` reads) are copied unchanged,
`--records_per_shard` to a shard, into OUT/SPLIT/SPLIT-NNNNN-of-MMMMM.array_record, `--workers` shards at a
time; OUT/SPLIT/records.json (the shards, their labels, the class names) is written last. A training host
then reads one index object instead of listing ~1.28M objects, and each image is a ranged read of a large
object. Either path may be gs://. No TensorFlow.

Resumable: a shard appears under its final name only once whole (written aside, then renamed or uploaded),
so re-running the same command after a kill writes only the missing shards. OUT/SPLIT/prepare.json records
the plan (source, image count, shard size); re-running with other flags or another image folder into the
same --out is an error, and nothing already written is touched.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import tempfile
import time

from ijepa_jax import storage
from ijepa_jax.data.encoded import RECORDS_FORMAT, RECORDS_INDEX, ImageFolder, pack_record
from ijepa_jax.errors import ConfigError

PLAN = "prepare.json"
WRITER_OPTIONS = "group_size:1,uncompressed"   # a record its own chunk (a random read reads one image), and
# JPEG bytes stored as they are (they do not compress; a codec would only cost CPU on every read)


def shard_names(split: str, num_shards: int) -> list[str]:
  return [f"{split}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def _write_shard(folder: ImageFolder, start: int, stop: int, final: str) -> None:
  """Records start..stop-1 of `folder` into `final` (local or gs://), which appears only when complete."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  remote = storage.is_remote(final)
  if remote:
    handle, tmp = tempfile.mkstemp(suffix=".array_record")
    os.close(handle)
  else:
    tmp = f"{final}.tmp-{os.getpid()}"
  try:
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    for i in range(start, stop):
      writer.write(pack_record(i, int(folder.labels[i]), folder._read(i)))  # pylint: disable=protected-access
    writer.close()
    if remote:
      storage.path(final).write_bytes(open(tmp, "rb").read())
    else:
      os.replace(tmp, final)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def prepare_split(images: str, out: str, split: str, records_per_shard: int, workers: int, log=print) -> dict:
  """Writes (or finishes writing) one split's shards and index; returns the index."""
  folder = ImageFolder(images, split, channels=3)   # lists the files; nothing is decoded
  n = len(folder)
  num_shards = -(-n // records_per_shard)
  bounds = [i * n // num_shards for i in range(num_shards + 1)]
  names = shard_names(split, num_shards)
  directory = storage.path(storage.join(out, split))
  directory.mkdir(parents=True, exist_ok=True)
  plan = {"format": RECORDS_FORMAT, "images": folder.directory, "num_records": n,
          "records_per_shard": records_per_shard, "num_shards": num_shards}
  plan_file = directory / PLAN
  if plan_file.exists():
    before = json.loads(plan_file.read_text())
    if before != plan:
      differ = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in plan.items() if before.get(k) != v)
      raise ConfigError(f"{directory} holds shards of another plan ({differ}): re-run with the flags that "
                        f"started it, or choose another --out (nothing there was changed).")
  else:
    plan_file.write_text(json.dumps(plan, indent=2))
  present = {p.name for p in directory.iterdir()}
  for stale in sorted(name for name in present if ".array_record.tmp-" in name):   # a killed run's partial shards
    (directory / stale).unlink()
  todo = [i for i, name in enumerate(names) if name not in present]
  log(f"{split}: {n} images in {num_shards} shards of ~{n // num_shards}; {num_shards - len(todo)} already "
      f"written, {len(todo)} to write with {workers} workers.")
  started, said, done, written = time.time(), 0.0, 0, 0
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    futures = {pool.submit(_write_shard, folder, bounds[i], bounds[i + 1], os.fspath(directory / names[i])): i
               for i in todo}
    for future in concurrent.futures.as_completed(futures):
      future.result()
      i = futures[future]
      done, written = done + 1, written + bounds[i + 1] - bounds[i]
      if time.time() - said > 10 or done == len(todo):   # a progress line at most every 10 s
        said = time.time()
        log(f"{split}: {num_shards - len(todo) + done}/{num_shards} shards, "
            f"{written / (said - started):,.0f} images/s")
  index = {"format": RECORDS_FORMAT, "classes": folder.classes,
           "shards": [[name, bounds[i + 1] - bounds[i]] for i, name in enumerate(names)],
           "labels": [folder.labels[bounds[i]:bounds[i + 1]].tolist() for i in range(num_shards)]}
  (directory / RECORDS_INDEX).write_text(json.dumps(index))
  log(f"{split}: {directory}/{RECORDS_INDEX} written: {n} records, {len(folder.classes)} classes.")
  return index


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if _RECORDS_PER_SHARD.value < 1:
      raise ConfigError(f"--records_per_shard={_RECORDS_PER_SHARD.value} must be positive.")
    storage.check_writable(_OUT.value, "--out")
    for split in [s for s in _SPLITS.value.split(",") if s]:
      prepare_split(_IMAGES.value, _OUT.value, split, _RECORDS_PER_SHARD.value, _WORKERS.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app, flags

  from ijepa_jax.errors import flags_parser
  _IMAGES = flags.DEFINE_string("images", None, "Image folder root holding SPLIT/CLASS/** (local or gs://).")
  _OUT = flags.DEFINE_string("out", None, "Where the shards go: OUT/SPLIT/*.array_record (local or gs://).")
  _SPLITS = flags.DEFINE_string("splits", "train,val", "Comma-separated splits (sub-folders of --images).")
  _RECORDS_PER_SHARD = flags.DEFINE_integer("records_per_shard", 1024, "Images per shard (ImageNet-1k train: "
                                            "1252 shards of ~110 MB).")
  _WORKERS = flags.DEFINE_integer("workers", 16, "Shards written at once (threads: reading and writing is I/O).")
  flags.mark_flags_as_required(["images", "out"])
  app.run(main, flags_parser=flags_parser("python -m ijepa_jax.prepare --images=DIR --out=DIR [--splits=train,val]"))
