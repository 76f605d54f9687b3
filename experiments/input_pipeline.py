"""Host input pipeline on ImageNet-like JPEGs: ours (grain) against the release's loader, in images/s per core.

  python experiments/input_pipeline.py [--reference=/path/to/ijepa | IJEPA_RELEASE=...] [--images=1200]
      [--workers=0,1,2] [--batch=64] [--batches=10] [--warmup=6] [--rounds=2] [--cache=DIR] [--out=FILE] [--note=TEXT]

What it measures, on the same files and the same cores (the settings interleaved, `--rounds` times):
  * ours: `make_pretrain_dataset` on an image folder, the full pretraining path (read, decode, random
    resized crop to 224, uint8 batch, ViT-H/14 multi-block masks) with 0 / 1 / 2 grain worker processes
    (read_threads=1), and once more with `data.jpeg_draft=False` (always the full decode);
  * the release: its own loader, imported at run time from a checkout of facebookresearch/ijepa
    (`src.datasets.imagenet1k.make_imagenet1k`: torchvision ImageFolder + `src.transforms.make_transforms`
    + a DataLoader with `src.masks.multiblock.MaskCollator`, in1k_vith14 settings), same worker counts;
  * images/s (wall) and images per CPU-second: the CPU time of this process and its worker processes over
    the timed batches (user + system). The second is "images/s per core": it does not depend on what else
    runs on the machine, and it counts the workers' cores, which the wall rate on a busy machine does not;
  * where the time goes: each stage of both paths timed alone on the same files (`stages`).

The files (generated once into --cache, outside the repository) are shaped like ImageNet's train set:
see `image_shape` and `jpeg_quality`. Pixels are 1/f noise (the amplitude spectrum of natural images),
so the entropy-coded size per pixel, which sets the decode time, is like a photo's; the results record
the files' mean size in pixels and bytes beside ImageNet's.

The release is CC BY-NC 4.0: imported from --reference at run time, never copied here. torchvision is
needed for it: `pip install -e '.[release_loader]'` (torchvision==0.28.0, for torch 2.13). Where the only
wheel to be had is a CUDA build next to a CPU torch, do not install it into the environment (it breaks
transformers' imports there); install it aside and point PYTHONPATH at it:
    pip install --no-deps --target /tmp/torchvision torchvision==0.28.0
    PYTHONPATH=/tmp/torchvision python experiments/input_pipeline.py --reference=...
Its compiled ops cannot load next to a CPU torch, but only its Python ImageFolder and transforms run
here, so its op registrations are skipped (and the results say so).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "experiments", "results", "input_pipeline.md")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ijepa_jax", "imagenet_like_jpegs")
HEADER = """# Host input pipeline: JPEG images/s per core, ours against the release's loader

Measured by `experiments/input_pipeline.py` (see its docstring): the full pretraining input path on
generated ImageNet-shaped JPEGs, ours (grain) and the release's (torchvision ImageFolder + transforms +
DataLoader with its MaskCollator), on the same files and cores. "per core" = images per CPU-second of the
loader's processes. Every section records its date, machine, versions and exact command.
"""
CLASSES = 10
# ViT-H/14 at 224 px (configs/vit_h14.py, the release's in1k_vith14_ep300.yaml): the masks every batch carries.
IMAGE_SIZE, PATCH = 224, 14
MASK = dict(num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0),
            context_aspect=(1.0, 1.0), min_keep=10, mode="release", num_context=-1, reference_batch=128)


# ============================================================================ the files
def image_shape(rng: np.random.Generator) -> tuple[int, int]:
  """(height, width) of one image, drawn like ImageNet train's: most were stored at 500 px on the long side
  (500x375, 500x333, 375x500, ...), about a fifth smaller, a few percent much larger (here log-uniform
  600-2000 px, 2.6% over 1 Mpx). Mean of this draw: ~505x375 px, ~220 kpx; the commonly quoted ImageNet
  mean is ~470x390. 75% landscape."""
  u = rng.random()
  if u < 0.72:
    long_side = 500
  elif u < 0.94:
    long_side = int(rng.integers(200, 500))
  else:
    long_side = int(np.exp(rng.uniform(np.log(600), np.log(2000))))
  aspect = float(rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 2, 3 / 2, 1.0, 5 / 4, 16 / 9]))
  short_side = max(1, int(round(long_side / aspect)))
  return (short_side, long_side) if rng.random() < 0.75 else (long_side, short_side)


def jpeg_quality(rng: np.random.Generator) -> int:
  """ImageNet's JPEGs are mostly high quality (libjpeg quality ~85-96 by their quantisation tables)."""
  return int(np.clip(round(rng.normal(90, 4)), 70, 98))


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """uint8 [h, w, 3] with a 1/f amplitude spectrum, channels correlated as in photos. Larger than 640 px:
  made at half size and enlarged (large photos hold less detail per pixel too)."""
  if max(h, w) > 640:
    from PIL import Image
    small = photo_like(rng, max(1, h // 2), max(1, w // 2))
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
  fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
  f = np.sqrt(fx ** 2 + fy ** 2)
  f[0, 0] = 1.0
  shape = (h, w // 2 + 1)
  common = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
  channels = []
  for _ in range(3):
    own = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    channels.append(np.fft.irfft2((0.8 * common + 0.2 * own) / f, s=(h, w)))
  x = np.stack(channels, -1)
  x = (x - x.mean()) / (x.std() + 1e-12)
  return np.clip(128 + 48 * x, 0, 255).astype(np.uint8)


def make_files(cache: str, n: int, seed: int = 0) -> tuple[str, dict]:
  """ROOT/train/CLASS/*.JPEG, made once per (n, seed); returns (ROOT, stats of the files)."""
  from PIL import Image
  root = os.path.join(cache, f"n{n}_seed{seed}_v2")
  done = os.path.join(root, "DONE")
  rng = np.random.default_rng(seed)
  if not os.path.exists(done):
    print(f"generating {n} JPEGs under {root} (once) ...", flush=True)
    for i in range(n):
      h, w = image_shape(rng)
      q = jpeg_quality(rng)
      d = os.path.join(root, "train", f"n{i % CLASSES:08d}")
      os.makedirs(d, exist_ok=True)
      Image.fromarray(photo_like(rng, h, w)).save(os.path.join(d, f"img_{i:06d}.JPEG"), quality=q)
    open(done, "w").close()
  sizes, nbytes, pixels = [], [], []
  for dirpath, _, files in os.walk(os.path.join(root, "train")):
    for f in files:
      p = os.path.join(dirpath, f)
      with Image.open(p) as im:
        sizes.append(im.size)
      nbytes.append(os.path.getsize(p))
      pixels.append(sizes[-1][0] * sizes[-1][1])
  sizes = np.asarray(sizes)
  stats = dict(n=len(nbytes), mean_kb=float(np.mean(nbytes)) / 1e3, mean_w=float(sizes[:, 0].mean()),
               mean_h=float(sizes[:, 1].mean()), median_px=float(np.median(pixels)),
               bytes_per_px=float(np.sum(nbytes) / np.sum(pixels)), over_1mpx=float(np.mean(np.asarray(pixels) > 1e6)))
  return root, stats


# ============================================================================ CPU accounting
def cpu_seconds() -> float:
  """User + system CPU seconds of this process and its live descendants (the loader's workers)."""
  import psutil
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def timed(iterator, batch: int, warmup: int, batches: int) -> dict:
  """Wall and CPU time of `batches` batches after `warmup` (start-up, first prefetches excluded)."""
  for _ in range(warmup):
    next(iterator)
  c0, t0 = cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    next(iterator)
  wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
  images = batch * batches
  return dict(rate=images / wall, per_cpu_s=images / max(cpu, 1e-9), cores=cpu / wall)


# ============================================================================ ours
def bench_ours(root: str, workers: int, batch: int, warmup: int, batches: int, draft: bool = True) -> dict:
  from ml_collections import ConfigDict
  from ijepa_jax import data
  from ijepa_jax.masks import MultiBlockSampler
  cfg = ConfigDict(dict(seed=0, batch_size=batch, data=dict(
      source="image_folder", path=root, split="train", image_size=IMAGE_SIZE, channels=3,
      crop_scale=(0.3, 1.0), crop_ratio=(3 / 4, 4 / 3), num_workers=workers, prefetch_buffer=max(2, workers * 2),
      read_threads=1, jpeg_draft=draft)))
  sampler = MultiBlockSampler.from_config(ConfigDict(MASK), IMAGE_SIZE // PATCH)
  it = iter(data.make_pretrain_dataset(cfg, sampler))
  try:
    out = timed(it, batch, warmup, batches)
    b = next(it)
    assert b["images"].shape == (batch, IMAGE_SIZE, IMAGE_SIZE, 3) and b["images"].dtype == np.uint8
  finally:
    if hasattr(it, "close"):
      it.close()
  return out


# ============================================================================ the release
def import_torchvision() -> str:
  """Imports torchvision; returns its version and how it was imported."""
  try:
    import torchvision
    return torchvision.__version__
  except ModuleNotFoundError:
    sys.exit("error: the release's loader needs torchvision: pip install -e '.[release_loader]' "
             "(torchvision==0.28.0), or, where only a build for another torch is to be had, "
             "pip install --no-deps --target DIR torchvision==0.28.0 and run with PYTHONPATH=DIR.")
  except RuntimeError as e:  # a CUDA build next to a CPU torch: its compiled ops (nms, ...) cannot register
    import types
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
      sys.modules[name] = types.ModuleType(name)
    import torchvision
    return (f"{torchvision.__version__} (its compiled ops did not load: {str(e)[:60]}; only its Python "
            f"ImageFolder and transforms are used)")


def bench_release(reference: str, root: str, workers: int, batch: int, warmup: int, batches: int) -> dict:
  import logging
  import torch
  sys.path.insert(0, reference)
  from src.datasets.imagenet1k import make_imagenet1k  # the release's package 'src', from --reference
  from src.masks.multiblock import MaskCollator
  from src.transforms import make_transforms
  logging.getLogger().setLevel(logging.WARNING)  # the release logs at INFO on the root logger
  collator = MaskCollator(input_size=IMAGE_SIZE, patch_size=PATCH, pred_mask_scale=MASK["target_scale"],
                          enc_mask_scale=MASK["context_scale"], aspect_ratio=MASK["target_aspect"], nenc=1,
                          npred=MASK["num_targets"], allow_overlap=False, min_keep=MASK["min_keep"])
  transform = make_transforms(crop_size=IMAGE_SIZE, crop_scale=(0.3, 1.0), gaussian_blur=False,
                              horizontal_flip=False, color_distortion=False, color_jitter=0.0)
  _, loader, _ = make_imagenet1k(transform=transform, batch_size=batch, collator=collator, pin_mem=False,
                                 num_workers=workers, world_size=1, rank=0, root_path=root, image_folder="",
                                 training=True, copy_data=False, drop_last=True)
  it = iter(loader)
  try:
    out = timed(it, batch, warmup, batches)
    (images, _), masks_enc, masks_pred = next(it)
    assert tuple(images.shape) == (batch, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
  finally:
    del it
  return out


def stages(root: str, limit: int = 200) -> dict:
  """CPU ms per file of each stage of the two paths on the first `limit` files, each stage timed alone:
  read; decode (ours: simplejpeg to RGBX where installed, else Pillow; the release's: Pillow to RGB);
  crop + resize to 224 (both: Pillow's antialiased bilinear on the crop, the boxes drawn as ours draws
  them); the release's ToTensor + Normalize (as torchvision computes them, where torch is installed); and
  ours end to end (`ImageFolder.load_crop`). Where the time goes, and so how far a faster decoder can go."""
  import io
  from PIL import Image
  from ijepa_jax.data import ImageFolder, _sample_crop_box
  from ijepa_jax.data import encoded
  paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "train")) for f in fs)[:limit]
  blobs = [open(p, "rb").read() for p in paths]
  rng = np.random.default_rng(0)

  def ms(fn, items) -> float:
    fn(items[0])
    best = float("inf")
    for _ in range(2):   # the better of two passes: less of what else runs on the machine
      c0 = time.process_time()   # this process only: finer-grained than cpu_seconds()
      for x in items:
        fn(x)
      best = min(best, time.process_time() - c0)
    return 1e3 * best / len(items)

  def read(p):
    with open(p, "rb") as f:
      return f.read()

  out = {"read": ms(read, paths)}
  pillow_rgb = lambda b: Image.open(io.BytesIO(b)).convert("RGB")
  out["decode, Pillow (release)"] = ms(pillow_rgb, blobs)
  if encoded._simplejpeg is not None:
    import simplejpeg
    out["decode, simplejpeg (ours)"] = ms(lambda b: simplejpeg.decode_jpeg(b, "RGBX", fastdct=False,
                                                                         fastupsample=False), blobs)
    out["simplejpeg_version"] = simplejpeg.__version__
  images = [pillow_rgb(b) for b in blobs]
  boxes = [_sample_crop_box(rng, im.size[1], im.size[0], (0.3, 1.0), (3 / 4, 4 / 3)) for im in images]
  work = list(zip(images, boxes))
  out["crop + resize (both)"] = ms(lambda x: x[0].crop((x[1][1], x[1][0], x[1][1] + x[1][3], x[1][0] + x[1][2]))
                                   .resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), work)
  try:
    import torch
    crops = [im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR) for im in images]
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out["ToTensor + Normalize (release)"] = ms(
        lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous().float().div(255).sub_(mean)
        .div_(std), crops)
  except ImportError:
    pass
  folder = ImageFolder(root, "train")
  index = {os.path.abspath(folder.path(i)): i for i in range(len(folder))}
  todo = [index[os.path.abspath(p)] for p in paths]
  out["ours, load_crop end to end"] = ms(lambda i: folder.load_crop(i, rng, IMAGE_SIZE), todo)
  return out


# ============================================================================ cores per host
MFU = 0.5
# (host, chips, dense bf16 TFLOP/s per chip): a Cloud TPU v5p host has 4 chips; an H100 SXM node 8 GPUs.
HOSTS = (("v5p host (4 chips, 459 TFLOP/s each)", 4, 459.0), ("8x H100 SXM node (989 TFLOP/s each)", 8, 989.4))


def model_flops() -> dict[str, float]:
  """Analytic train-step FLOPs per image (ijepa_jax.flops: matmuls + attention, backward = 2x forward) of
  ViT-H/14 (configs/vit_h14.py; the TPU compiler counts the same 2.08e13 per device-step of 32 images
  unrolled) and ViT-B/16 (predictor depth 6, as in the paper's appendix), 224 px, release masks."""
  import importlib.util
  from ijepa_jax.flops import config_flops
  from ijepa_jax.masks import MultiBlockSampler
  spec = importlib.util.spec_from_file_location("vit_h14", os.path.join(REPO, "configs", "vit_h14.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = {}
  for name, model, patch, pred_depth in (("ViT-H/14", "vit_huge", 14, 12), ("ViT-B/16", "vit_base", 16, 6)):
    c = module.get_config()
    c.model.name, c.model.patch_size, c.model.predictor_depth = model, patch, pred_depth
    sampler = MultiBlockSampler.from_config(c.mask, c.data.image_size // patch)
    out[name] = float(config_flops(c, sampler.num_context, sampler.num_targets, sampler.num_target)["total"])
  return out


def cores_rows(per_core: dict[str, float]) -> list[str]:
  """Host cores needed to feed each model at MFU on each host, from images/s per core of each loader."""
  flops = model_flops()
  names = list(per_core)
  lines = ["", f"Cores per host to feed the chips at {100 * MFU:.0f}% MFU (images/s per chip = MFU x peak / FLOPs "
               f"per image; cores = images/s per host / images/s per core):", "",
           "| model | FLOPs/image | host | images/s per chip | images/s per host | "
           + " | ".join(f"cores, {n}" for n in names) + " |",
           "|---|---|---|---|---|" + "---|" * len(names)]
  for model, f in flops.items():
    for host, chips, tflops in HOSTS:
      chip_rate = MFU * tflops * 1e12 / f
      lines.append(f"| {model} | {f:.3e} | {host} | {chip_rate:.0f} | {chips * chip_rate:.0f} | "
                   + " | ".join(f"{chips * chip_rate / per_core[n]:.1f}" for n in names) + " |")
  return lines


# ============================================================================ report
def median(rows: list[dict], key: str) -> float:
  return float(np.median([r[key] for r in rows]))


def report(args, stats, ours, ours_full, release, tv_version, dec, load_before) -> str:
  import grain
  import jax
  import PIL
  import record
  versions = (f"jax {jax.__version__}, grain {getattr(grain, '__version__', '?')}, Pillow {PIL.__version__}, "
              f"numpy {np.__version__}, Python {platform.python_version()}")
  if release:
    import torch
    versions += f", torch {torch.__version__}, torchvision {tv_version}"
  lines = [f"## {record.utc_date()}: {stats['n']} JPEGs, batch {args.batch}, {IMAGE_SIZE} px, ViT-H/14 masks", "",
           f"- machine: {record.machine()}; load average (1/5/15 min) {load_before} before, {record.loadavg()} after",
           f"- versions: {versions}",
           f"- command: `{args.command}`"]
  if release:
    lines.append(f"- release: {args.reference} (commit {args.release_commit})")
  if args.note:
    lines.append(f"- note: {args.note}")
  lines += [f"- files: {stats['n']} JPEGs in {CLASSES} classes, mean {stats['mean_w']:.0f}x{stats['mean_h']:.0f} px "
            f"(median {stats['median_px'] / 1e3:.0f} kpx, {100 * stats['over_1mpx']:.0f}% over 1 Mpx), mean "
            f"{stats['mean_kb']:.0f} kB, {stats['bytes_per_px']:.2f} bytes/px (ImageNet train: ~110 kB per file, "
            f"~138 GB over 1.28M files)",
           f"- timing: {args.batches} batches after {args.warmup} warm-up, median of {args.rounds} interleaved "
           f"rounds; per core = images / CPU-seconds of the loader's processes",
           "", "| loader | workers | images/s (wall) | CPU cores busy | images/s per core |", "|---|---|---|---|---|"]
  for w in args.workers:
    rows = [("ours (grain)", ours[w])]
    if w == 0:
      rows.append(("ours, jpeg_draft=False", ours_full))
    if release:
      rows.append(("release (DataLoader)", release[w]))
    for name, rs in rows:
      lines.append(f"| {name} | {w} | {median(rs, 'rate'):.1f} | {median(rs, 'cores'):.2f} | "
                   f"{median(rs, 'per_cpu_s'):.1f} |")
  if release:
    lines += ["", "| workers | ours / release, images/s per core | ours / release, wall |", "|---|---|---|"]
    for w in args.workers:
      lines.append(f"| {w} | {median(ours[w], 'per_cpu_s') / median(release[w], 'per_cpu_s'):.2f}x | "
                   f"{median(ours[w], 'rate') / median(release[w], 'rate'):.2f}x |")
  # A training host runs worker processes: their per-core rate (the most workers measured) sizes it.
  w = max(args.workers)
  per_core = {f"ours, {w} workers": median(ours[w], "per_cpu_s")}
  if release:
    per_core[f"release, {w} workers"] = median(release[w], "per_cpu_s")
  lines += cores_rows(per_core)
  if dec:
    lines += ["", f"Where the time goes: CPU ms per file, each stage timed alone on the first {min(200, stats['n'])} "
                  "files (`stages`):", "", "| stage | ms per file |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in dec.items() if not k.endswith("version")]
    if "simplejpeg_version" in dec:
      lines.append(f"| (simplejpeg {dec['simplejpeg_version']}) | |")
  return "\n".join(lines) + "\n\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reference", default=os.environ.get("IJEPA_RELEASE"),
                 help="checkout of facebookresearch/ijepa (default: $IJEPA_RELEASE); without it, ours only")
  p.add_argument("--images", type=int, default=1200)
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=10)
  p.add_argument("--warmup", type=int, default=6,
                 help="untimed batches first: start-up and the batches prefetched during it")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--cache", default=DEFAULT_CACHE, help="where the generated JPEGs are kept (outside the repo)")
  p.add_argument("--out", default=DEFAULT_OUT)
  p.add_argument("--note", default="")
  args = p.parse_args(argv)
  args.command = shlex.join(["python", os.path.relpath(sys.argv[0]), *(sys.argv[1:] if argv is None else argv)])
  try:
    args.workers = [int(w) for w in args.workers.split(",")]
    assert all(w >= 0 for w in args.workers) and args.images >= args.batch * (args.warmup + args.batches + 1)
  except (ValueError, AssertionError):
    print("error: --workers=0,1,2 (non-negative), and --images at least batch * (warmup + batches + 1): the "
          "release's loader is timed within one epoch (a new epoch restarts its worker processes).", file=sys.stderr)
    return 2
  if args.reference and not os.path.isfile(os.path.join(args.reference, "src", "masks", "multiblock.py")):
    print(f"error: --reference={args.reference} has no src/masks/multiblock.py: not a facebookresearch/ijepa "
          f"checkout (get one with `git clone https://github.com/facebookresearch/ijepa`).", file=sys.stderr)
    return 2
  sys.path.insert(0, REPO)
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import record
  load_before = record.loadavg()
  root, stats = make_files(args.cache, args.images)
  tv_version = None
  if args.reference:
    args.reference = os.path.abspath(args.reference)
    import release_parity as rp
    args.release_commit = rp.release_commit(args.reference, "")
    tv_version = import_torchvision()
    import torch
    torch.set_num_threads(1)  # as in the DataLoader's workers; with 0 workers, one core like ours
  ours = {w: [] for w in args.workers}
  release = {w: [] for w in args.workers} if args.reference else None
  ours_full = []
  for r in range(args.rounds):
    for w in args.workers:
      ours[w].append(bench_ours(root, w, args.batch, args.warmup, args.batches))
      print(f"round {r}, {w} workers: ours {ours[w][-1]['rate']:.1f} images/s, "
            f"{ours[w][-1]['per_cpu_s']:.1f} per core", flush=True)
      if release is not None:
        release[w].append(bench_release(args.reference, root, w, args.batch, args.warmup, args.batches))
        print(f"round {r}, {w} workers: release {release[w][-1]['rate']:.1f} images/s, "
              f"{release[w][-1]['per_cpu_s']:.1f} per core", flush=True)
      if w == 0:
        ours_full.append(bench_ours(root, 0, args.batch, args.warmup, args.batches, draft=False))
  text = report(args, stats, ours, ours_full, release, tv_version, stages(root), load_before)
  record.append(args.out, text, HEADER)
  print("\n" + text + f"appended to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
