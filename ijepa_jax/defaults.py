"""Every config key, with the release's ViT-H/14 ImageNet-1k values as defaults.

Experiment files in configs/ start from `base_config()` and change what differs. Because all keys
exist here, a `--config.some_key=...` typo is rejected by config_flags before anything runs.
"""
from __future__ import annotations

import functools

import ml_collections

from ijepa_jax.models.layout import STACKED_AXIS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 2048            # global, over all processes and devices
  c.num_epochs = 300
  c.total_steps = -1             # -1: num_epochs * (examples // batch_size)
  c.warmup_epochs = 40.0
  c.warmup_steps = -1            # >= 0 overrides warmup_epochs
  c.loss = "smooth_l1"           # release: smooth_l1; paper: l2
  c.target = "representation"    # representation (I-JEPA) | pixels: each target patch's pixels normalised per
                                 # patch, as MAE's (the paper's Table 7 ablation; the target encoder is not run)
  c.dtype = "float32"            # float32 | bfloat16: the release's autocast (bf16 matmuls and conv, fp32
                                 # residual stream, LayerNorm, softmax and loss; fp32 params and optimizer)
  c.grad_accum_steps = 1         # > 1: the step averages gradients over this many micro-batches of the batch
                                 # (activation memory of one micro-batch; one optimizer and EMA update)

  c.model = ml_collections.ConfigDict(dict(
      name="vit_huge", patch_size=14,
      width=-1, depth=-1, num_heads=-1, mlp_dim=-1,       # -1: from the named size
      predictor_width=384, predictor_depth=12, predictor_heads=-1,  # -1: the encoder's heads
      remat="dots",            # none | full | dots | dots_no_batch: activations recomputed in backward
      attention="xla",         # xla (einsums, any backend) | cudnn (jax.nn.dot_product_attention's fused
                               # kernel on NVIDIA GPUs, bf16 only; its XLA implementation elsewhere)
      scan_layers=True,        # True: the encoder's and predictor's blocks run in one nn.scan (one block
                               # compiled, not depth of them); params stacked under 'blocks' [depth, ...]
                               # instead of blocks_0..: another checkpoint layout (ijepa_jax.models.layout).
                               # With remat=dots: the unrolled remat=none's memory at ~1/14 of its TPU
                               # compile time, and a faster XLA:CPU step (README, "Compile time")
  ))

  c.data = ml_collections.ConfigDict(dict(
      source="image_folder",     # fashion_mnist | image_folder | tfds | synthetic
      path="/data/imagenet",     # image_folder: holds train/ and val/ with one folder per class
      tfds_name="", tfds_data_dir="",
      split="train", eval_split="val",
      image_size=224, channels=3,
      crop_scale=(0.3, 1.0), crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
      mean=IMAGENET_MEAN, std=IMAGENET_STD,
      num_workers=8, prefetch_buffer=4,
      read_threads=-1,           # threads reading and decoding files; -1: min(16, CPU cores / max(1, num_workers))
      jpeg_draft=True,           # image_folder: decode a JPEG at 1/2-1/8 scale when its crop keeps >= image_size
                                 # pixels (libjpeg DCT scaling; same crop boxes); False: always the full decode
      synthetic_size=256,
      accept_new_order=False,    # resume a checkpoint written with another batch_size, seed or dataset size:
                                 # the data continue as a run started with this config would at that step
  ))

  c.mask = ml_collections.ConfigDict(dict(
      # multiblock (the paper's) | rasterized | block | random: the paper's masking ablation (Table 6);
      # see ijepa_jax/mask_strategies.py. Only multiblock reads the keys below block_scale.
      strategy="multiblock",
      block_scale=0.6, block_aspect=(0.75, 1.5),   # block: one target block of this scale, context its complement
      random_ratio=0.6,          # random: this fraction of the patches the target, the rest the context
      mode="release",            # release | uniform (no corner off-by-one); see ijepa_jax/masks.py
      num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
      context_scale=(0.85, 1.0), context_aspect=(1.0, 1.0),
      min_keep=10,
      # release: the release's token counts at static shapes: whole target blocks and each device batch's
      # contexts truncated to its shortest, padded (masked in attention and the loss); fixed: every block
      # the smallest area and every context num_context tokens (smaller shapes). See ijepa_jax/masks.py.
      counts="fixed",
      num_context=-1,            # fixed: -1 = the release's mean truncated context length at reference_batch;
                                 # release: the padded length, -1 = the longest context possible (never cut)
      reference_batch=128,       # the release's per-device batch (for counts=fixed's num_context)
      context_buckets=(),        # counts=release: context lengths a global batch may be padded to, the shortest
                                 # holding its longest context (num_context is always the last); one compiled
                                 # step each, all before step 1. (): every batch padded to num_context
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, start_lr=2e-4, final_lr=1e-6,
      weight_decay=0.04, final_weight_decay=0.4, wd_schedule="cosine",
      ema=(0.996, 1.0), b1=0.9, b2=0.999, eps=1e-8,
  ))

  c.cpu_devices = -1             # > 0: run this many JAX devices on the CPU (jax_num_cpu_devices), e.g. 2 on a
                                 # 2-core machine: two half-batch programs keep both cores busier than one
                                 # (~15% faster demo step); -1: JAX's default (JAX_NUM_CPU_DEVICES or 1)
  # Within a slice (or one GPU machine / cluster): fully sharded data parallelism by default, so the paper
  # configs split parameters, optimizer state and the EMA target over every device (ViT-H/14 on a v5p-128:
  # 1/64 of the 9.64 GiB train state per chip; README "Memory"). data=-1, fsdp=1: plain data parallelism,
  # every device holding the whole state (the Fashion-MNIST demo's choice on its two CPU devices).
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1))
  # Across slices of a multi-slice TPU job (DCN); `mesh` then sizes each slice. Ignored on one slice.
  c.mesh_dcn = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # Logical axis -> mesh axes. Parameters: 'embed' is split over fsdp (FSDP); activations: the batch
  # is split over data and fsdp.
  c.axis_rules = (
      ("act_batch", ("data", "fsdp")), ("act_length", None), ("act_embed", None), ("act_mlp", None),
      ("embed", "fsdp"), ("mlp", None), ("qkv", None), ("heads", None),
      ("patch_h", None), ("patch_w", None), ("channels", None),
      ("embed_in", None), ("embed_out", None), ("norm", None),
      (STACKED_AXIS, None),    # scan_layers: the stacked blocks' leading axis, never split
  )

  c.skip_nonfinite_steps = False  # True: a step with a NaN/Inf loss or gradient changes nothing (counted in
                                 # metrics as nonfinite_steps); False: the run stops at that step
  c.run_steps = -1              # > 0: stop after this many steps of this invocation (checkpointed),
                                # e.g. for schedulers with time limits; re-run the command to continue
  c.compilation_cache = "workdir"  # JAX's persistent compilation cache: "workdir" (WORKDIR/compilation_cache),
                                 # another folder (gs:// allowed) or "" (off); a restart reads its step back
  c.write_plots = True           # at the end: training_curves.png, mask_examples.png, probe_results.png
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3

  c.probe = ml_collections.ConfigDict(dict(
      enabled=False,             # ijepa_jax.evaluate on the target encoder after pretraining
      evals=("linear", "lowshot", "knn"),
      max_train=-1,              # -1: the whole train split
      max_test=-1,               # -1: the whole test split (eval_split); N: N evenly spaced examples
      batch_size=256,            # feature extraction batch (global)
      shard_size=4096,           # examples per feature shard (eval_cache/<step>/<features>/<split>/shard_*.npz)
      in_memory_gib=4.0,         # train features (float32) up to this size: the full-batch probes in memory;
                                 # larger: the streamed ones (linear: the paper's LARS protocol, sgd_* below)
      sgd_lrs=(0.01, 0.05, 0.001), sgd_weight_decays=(0.0005, 0.0),  # the paper's sweep (reference lr x batch/256)
      sgd_batch_size=16384, sgd_epochs=50, sgd_decay_epochs=15,      # LARS; lr / 10 every 15 epochs
      sgd_window=8,              # shards read and shuffled together
      sgd_reference_examples=1281167,  # the split size sgd_batch_size is for: a smaller split keeps its steps per
                                 # epoch with a smaller batch (same lr a step); 0: sgd_batch_size on any split
      weight_decays=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7),  # a path, strongest first; chosen on held-out train, refit
      standardise=True,          # features to zero mean / unit variance first (the probe's BatchNorm)
      lowshot_fraction=0.01, lowshot_seeds=(0, 1, 2),
      lowshot_list="",           # a file of train file names (SimCLR's imagenet_subsets/1percent.txt): that subset
                                 # instead of lowshot_fraction drawn per seed
      knn_k=20, knn_temperature=0.07,
      attentive_lrs=(1e-3, 3e-3), attentive_weight_decays=(0.01, 0.1),  # chosen on held-out train, refit
      attentive_epochs=10,
      monitor_every=0,           # > 0: k-NN on a subset every N steps during training (metric knn_monitor)
      monitor_train=2000, monitor_test=1000,
      random_init_baseline=True, # the same encoder at its initialisation, through the same probes
      raw_pixels_baseline=True,
      raw_pixels_side=28,        # the raw-pixel baseline reads images resized to this side
  ))
  return c


# What configs written by earlier versions (a workdir's config.json) meant by a key they lack, where that
# differs from today's default; every other missing key means base_config()'s value.
EARLIER = {"model.scan_layers": False, "model.remat": "none"}


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A config from a file written by any version, with every key of base_config(): a missing key takes
  EARLIER's value, else the default. Keys the file has are kept as they are, known or not."""
  def merge(base: dict, given: dict) -> dict:
    out = dict(base)
    for key, value in given.items():
      out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out

  base = base_config().to_dict()
  for name, value in EARLIER.items():
    section, key = name.split(".")
    base[section][key] = value
  return ml_collections.ConfigDict(merge(base, config.to_dict()))


@functools.cache
def _flat() -> dict:
  return {f"{section}.{key}": value for section, values in base_config().to_dict().items()
          if isinstance(values, dict) for key, value in values.items()}


def get(section, name: str):
  """section's value of name ('data.num_workers': section is a config's `data`), or base_config()'s when the
  section lacks it or holds None: for code that also takes partial configs (tests, benchmarks)."""
  key = name.split(".", 1)[1]
  try:
    value = section.get(key)
  except AttributeError:  # a plain object
    value = getattr(section, key, None)
  return _flat()[name] if value is None else value
