"""Image folder against record shards (ijepa_jax.prepare), on local disk and in Cloud Storage, per host.

  python experiments/data_sources.py [--images=600] [--latency_ms=20] [--threads=16] [--rounds=2] [--out=FILE]

The same ImageNet-shaped JPEGs (experiments/input_pipeline.py's generator: sizes, quality and entropy like
ImageNet's train set) as `data.source=image_folder` and as `data.source=records`, each on local disk and in
the Cloud Storage emulator (tests/gcs_emulator.py on loopback) with `--latency_ms` added to every request and
requests served concurrently: what a bucket costs a host is mostly its per-request latency. Per setting,
interleaved `--rounds` times:
  * open: building the source (the folder: listing every object; the records: reading one index object);
  * fetch: the encoded bytes of every image read in random order by `--threads` threads (the I/O alone):
    the first pass (which also opens every shard's reader) and the median of two more;
  * pipeline: `make_pretrain_dataset`'s images/s with `--threads` read threads (fetch, decode, crop, masks),
    over `--batches` batches from the iterator's start (the source already open).
The emulator is a Python server on the same cores, so the absolute gs:// rates are a floor; the ratios and
the per-object listing cost are what carry to a pod.
"""
from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import datetime
import os
import shlex
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, REPO]
DEFAULT_OUT = os.path.join(REPO, "experiments", "results", "data_sources.md")
HEADER = """# Image folder or record shards: images/s per host, local disk and Cloud Storage

Measured by `experiments/data_sources.py` (see its docstring). Each section records its date, machine,
the injected per-request latency and the exact command.
"""
BUCKET = "ijepa-bench"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_emulator(latency_ms: float):
  port = _free_port()
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), f"--port={port}",
                           f"--bucket={BUCKET}", f"--latency_ms={latency_ms}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  for _ in range(600):
    try:
      socket.create_connection(("127.0.0.1", port), 0.5).close()
      break
    except OSError:
      time.sleep(0.1)
  url = f"http://127.0.0.1:{port}"
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, CLOUD_STORAGE_EMULATOR_ENDPOINT=url,
                    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
  return proc


def upload(local_root: str, remote_root: str, threads: int) -> None:
  from etils import epath
  files = [os.path.join(d, f) for d, _, fs in os.walk(local_root) for f in fs]

  def one(path):
    epath.Path(remote_root, os.path.relpath(path, local_root)).write_bytes(open(path, "rb").read())
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(one, files))


def config(source: str, path: str, threads: int, batch: int):
  from ml_collections import ConfigDict
  return ConfigDict(dict(seed=0, batch_size=batch, data=dict(
      source=source, path=path, split="train", image_size=224, channels=3, crop_scale=(0.3, 1.0),
      crop_ratio=(3 / 4, 4 / 3), num_workers=0, prefetch_buffer=threads, read_threads=threads, jpeg_draft=True)))


def measure(source_name: str, path: str, threads: int, batch: int, batches: int) -> dict:
  from ijepa_jax import data
  from ijepa_jax.masks import MultiBlockSampler
  import input_pipeline as ip
  from ml_collections import ConfigDict
  cfg = config(source_name, path, threads, batch)
  t = time.perf_counter()
  source = data.make_source(cfg, "train")
  open_s = time.perf_counter() - t
  rates = []
  for seed in (0, 1, 2):   # the first pass also opens what it reads (the records: each shard's reader)
    order = np.random.default_rng(seed).permutation(len(source))
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      nbytes = sum(map(len, pool.map(source._read, order)))   # pylint: disable=protected-access
    rates.append(len(order) / (time.perf_counter() - t))
  first, fetch = rates[0], float(np.median(rates[1:]))
  sampler = MultiBlockSampler.from_config(ConfigDict(ip.MASK), 224 // 14)
  t = time.perf_counter()
  it = iter(data.make_pretrain_dataset(cfg, sampler, source=source))
  try:
    for _ in range(batches):    # from the start: a warm-up would only time batches already prefetched
      next(it)
    pipeline = batch * batches / (time.perf_counter() - t)
  finally:
    if hasattr(it, "close"):
      it.close()
  return dict(open_s=open_s, first=first, fetch=fetch, pipeline=pipeline, mean_kb=nbytes / len(order) / 1e3,
              n=len(source))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--images", type=int, default=600)
  p.add_argument("--latency_ms", type=float, default=20.0)
  p.add_argument("--threads", type=int, default=16)
  p.add_argument("--records_per_shard", type=int, default=8,
                 help="small, so that the shards outnumber the threads as ImageNet's 1252 do: array_record reads a "
                      "shard through one reader")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--batches", type=int, default=64, help="at least 4x --threads: the read-ahead is --threads batches")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "ijepa_jax", "imagenet_like_jpegs"))
  p.add_argument("--out", default=DEFAULT_OUT)
  args = p.parse_args(argv)

  from absl import flags
  flags.FLAGS.mark_as_parsed()
  import input_pipeline as ip
  import record
  from ijepa_jax import prepare
  root, stats = ip.make_files(args.cache, args.images)
  records = os.path.join(args.cache, f"records_n{args.images}_{args.records_per_shard}")
  prepare.prepare_split(root, records, "train", args.records_per_shard, 4, log=lambda *_: None)
  emulator = start_emulator(args.latency_ms)
  # Stopped at exit, after the read-ahead threads of the last pipeline have finished their reads (Python
  # joins them before atexit handlers run): a read from a stopped bucket would retry for minutes.
  atexit.register(emulator.terminate)
  remote = f"gs://{BUCKET}"
  t = time.perf_counter()
  upload(root, f"{remote}/images", 1)       # one at a time: the emulator's resumable uploads are not
  upload(records, f"{remote}/records", 1)   # safe to run concurrently
  print(f"uploaded in {time.perf_counter() - t:.1f} s", flush=True)
  settings = {"image folder, local": ("image_folder", root), "records, local": ("records", records),
              f"image folder, gs:// ({args.latency_ms:g} ms)": ("image_folder", f"{remote}/images"),
              f"records, gs:// ({args.latency_ms:g} ms)": ("records", f"{remote}/records")}
  results = record.interleaved(settings, lambda source, path: measure(source, path, args.threads, args.batch,
                                                                      args.batches), args.rounds,
                               lambda line: print(line, flush=True))
  med = record.medians(results)
  lines = [f"\n## {datetime.date.today()}: {args.images} images, {args.threads} threads, "
           f"{args.latency_ms:g} ms a request\n",
           f"Machine: {record.machine()}; files: mean {stats['mean_w']:.0f}x{stats['mean_h']:.0f} px, "
           f"{stats['mean_kb']:.0f} kB; records: {args.records_per_shard} a shard. Median of {args.rounds} "
           f"interleaved rounds.\n",
           "| source | open (s) | open per image (ms) | fetch images/s, first pass | fetch images/s | "
           "pipeline images/s |",
           "|---|---|---|---|---|---|"]
  for name, m in med.items():
    lines.append(f"| {name} | {m['open_s']:.3f} | {1e3 * m['open_s'] / m['n']:.3f} | {m['first']:,.0f} | "
                 f"{m['fetch']:,.0f} | {m['pipeline']:,.0f} |")
  folder_gs = med[f"image folder, gs:// ({args.latency_ms:g} ms)"]
  records_gs = med[f"records, gs:// ({args.latency_ms:g} ms)"]
  per_image = folder_gs["open_s"] / folder_gs["n"]
  lines += ["", f"Listing: {1e3 * per_image:.2f} ms per object through the emulator; Cloud Storage lists at most 1,000 "
            f"objects a request, so ImageNet-1k train (1,281,167 objects) is >= 1,282 sequential list requests per "
            f"host at every start ({1.282 * args.latency_ms:.0f} s at {args.latency_ms:g} ms each, before any "
            f"server time), against one read of the records' index ({records_gs['open_s']:.2f} s here). Fetch "
            f"through gs:// once the readers are open: records {records_gs['fetch'] / folder_gs['fetch']:.2f}x the "
            f"image folder's rate; the full pipeline {records_gs['pipeline'] / folder_gs['pipeline']:.2f}x.",
            "", f"Command: `python experiments/data_sources.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
            ""]
  text = "\n".join(lines)
  new = not os.path.exists(args.out) or os.path.getsize(args.out) == 0
  with open(args.out, "a") as f:
    f.write((HEADER if new else "") + text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
