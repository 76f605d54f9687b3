"""Parity with the PyTorch release (facebookresearch/ijepa): predictor, one full train step, the convert CLI.

  python experiments/release_parity.py --release=/path/to/ijepa [--out=experiments/results/release_parity.md]

Why this exists: tests/test_convert.py checks the checkpoint layout and the encoder forward against
torch ops written from REFERENCE.md, but nothing there runs the release's own code. Here the release's
VisionTransformer and VisionTransformerPredictor are built with their own random init, saved as a
release checkpoint (the dict src/train.py writes, 'module.'-prefixed state dicts), imported with our
converter, and compared on
  * the encoder output (full image, and the context tokens),
  * the predictor output for the same context and target indices (the release concatenates target
    blocks along the batch, mask-major; ours keeps [B, M, Kt, D]: reordered before comparing),
  * the loss and every gradient of one training step (src/train.py's step: target encoder under
    no_grad, F.layer_norm, apply_masks + repeat_interleave_batch, smooth-L1, backward) against
    ijepa_jax.step's pieces under jax.value_and_grad; torch's .grad tensors are mapped into our tree by
    the converter itself, so a layout mistake there shows up as a gradient mismatch,
  * the loss and global gradient norm reported by our jitted make_train_step (uint8 images, normalised
    on device), which checks the wiring of the real step rather than a re-assembly of its pieces,
  * the release's own masks (`mask.counts='release'`): its MaskCollator draws two per-GPU batches whose
    context and target lengths differ; the release's step runs on each and DDP's mean of the gradients
    is compared with one step of ours on both, the masks padded to our static lengths with their counts
    (loss, every gradient, and the jitted step's loss and gradient-norm metrics),
  * the command lines a user runs (issue 3's done-criterion): `python -m ijepa_jax.convert --torch=...`
    on the saved release checkpoint (the demo config plus `--config.KEY=VALUE` overrides for the
    release model), then `python -m ijepa_jax.extract --pool=none` (default --encoder=target) on the
    normalised float32 images, against the release's target_encoder on the same images; run as
    subprocesses, so flag parsing, config.json, the orbax checkpoint and train.load are all in the path.
Each comparison is max|ours - theirs| / max|theirs| over the tensor; all must be <= 1e-5 (fp32).

Then the same batch in bf16 (`--config.dtype=bfloat16` on our side; the release's modules under CUDA's
autocast, reproduced on CPU by experiments/cuda_autocast.py): target- and context-encoder features, the
predictor, the loss and every gradient of one step. bf16 cannot match to 1e-5, so the yardstick is the
release's own: for each quantity, the distance of our bf16 from the release's bf16 must be no larger
than the distance of the release's bf16 from its fp32 (relative L2, ||a - b|| / ||b||; gradients
concatenated per network; the loss, a single number per batch, as the RMS of its relative error over 8
batches). XLA's excess precision (keeping fp32 where a bf16 rounding was asked for) is turned off for the
run, so that rounding points are compared. The release's GradScaler is left out: it multiplies the loss by a power of
two and divides the gradients by it, which bf16's fp32-sized exponent range leaves exact.
`--vith14` adds the features of a release ViT-H/14 (random init, 2 images of 224 px) in both precisions.

The release is CC BY-NC 4.0: it is imported at run time from --release and nothing of it is copied
here. Without that checkout, or without torch, the script prints one line saying why and exits 0, so
it can sit in scripts and tests that run where neither is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-5
TINY = 1e-30
LOSS_BATCHES = 8   # bf16: batches the loss's relative error is averaged over (RMS)
# The release checkout is a plain copy (no .git) in our set-up: its commit is recorded as given.
DEFAULT_COMMIT = '52c1ae9 ("Initial commit")'
# Files of the release whose code runs here: their hashes pin what was compared.
RELEASE_FILES = ("src/models/vision_transformer.py", "src/masks/utils.py", "src/utils/tensors.py",
                 "src/helper.py", "src/train.py", "src/masks/multiblock.py")

# Two geometries: 3 channels on an 8x8 grid with the release's corner mode, and the demo's 1 channel,
# 7x7 grid and uniform mode with a deeper, 6-head model (head_dim 16) and predictor heads = encoder
# heads as the release's init_model sets them.
SIZES = (
    dict(name="tiny", image=32, patch=4, channels=3, width=64, depth=2, heads=4,
         pred_width=32, pred_depth=2, pred_heads=4, batch=4, mask_mode="release",
         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    dict(name="small", image=56, patch=8, channels=1, width=96, depth=3, heads=6,
         pred_width=48, pred_depth=2, pred_heads=6, batch=3, mask_mode="uniform",
         mean=(0.2860,), std=(0.3530,)),
)


def rel_err(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if ours.shape != theirs.shape:
    return float("inf")
  return float(np.max(np.abs(ours - theirs)) / max(float(np.max(np.abs(theirs))), TINY))


# ============================================================================ configs
DEMO_CONFIG = os.path.join(REPO, "configs", "fashion_mnist.py")


def demo_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location("fashion_mnist", DEMO_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def our_config(size: dict):
  """The demo config (configs/fashion_mnist.py) reshaped to the release model built for `size`."""
  c = demo_config()
  c.dtype = "float32"
  c.loss = "smooth_l1"
  c.batch_size = size["batch"]
  c.data.image_size, c.data.channels = size["image"], size["channels"]
  c.data.mean, c.data.std = size["mean"], size["std"]
  m = c.model
  m.name, m.patch_size = "vit_tiny", size["patch"]
  m.width, m.depth, m.num_heads, m.mlp_dim = size["width"], size["depth"], size["heads"], 4 * size["width"]
  m.predictor_width, m.predictor_depth = size["pred_width"], size["pred_depth"]
  m.predictor_heads = size["pred_heads"]
  # min_keep 4: the release's default of 10 cannot work with 9-token target blocks on an 8x8 grid.
  c.mask.mode, c.mask.min_keep, c.mask.reference_batch = size["mask_mode"], 4, size["batch"]
  c.probe.enabled = False
  return c


def config_overrides(config) -> list[str]:
  """The `--config.KEY=VALUE` flags that turn configs/fashion_mnist.py into `config` (what differs)."""
  from flax import traverse_util
  base = traverse_util.flatten_dict(demo_config().to_dict(), sep=".")
  ours = traverse_util.flatten_dict(config.to_dict(), sep=".")
  if set(base) != set(ours):
    raise RuntimeError(f"config keys differ from the demo config's: {sorted(set(base) ^ set(ours))}")

  def text(v):
    if isinstance(v, (tuple, list)):
      return "(" + ",".join(repr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v) if isinstance(v, float) else str(v)

  return [f"--config.{k}={text(v)}" for k, v in sorted(ours.items()) if v != base[k]]


def cli_features(config, checkpoint: str, images: np.ndarray, workdir: str, name: str) -> np.ndarray:
  """Tokens [N, T, D] of the converted target encoder, through the convert and extract CLIs."""
  out_dir = os.path.join(workdir, f"{name}-converted")
  images_path = os.path.join(workdir, f"{name}-images.npy")
  features_path = os.path.join(workdir, f"{name}-features.npy")
  np.save(images_path, images)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  for cmd in ([sys.executable, "-m", "ijepa_jax.convert", f"--torch={checkpoint}", f"--config={DEMO_CONFIG}",
               f"--out={out_dir}", *config_overrides(config)],
              [sys.executable, "-m", "ijepa_jax.extract", f"--checkpoint={out_dir}", f"--images={images_path}",
               f"--out={features_path}", "--pool=none"]):
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd[1:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
  return np.load(features_path)


# ============================================================================ the release's side
def release_models(torch, vit, helper, size: dict, seed: int):
  """(encoder, predictor, target_encoder, optimizer) of the release with its own init, fp32.

  The encoder gets the keyword arguments the release's vit_* factories pass (mlp_ratio 4, or
  size['mlp_ratio'] for other shapes, qkv bias, LayerNorm eps 1e-6), the predictor comes from its
  vit_predictor factory, and init_model's re-init
  (trunc_normal_ std 0.02 on every Linear, LayerNorm 1/0) is applied with the release's trunc_normal_.
  Biases and LayerNorm affines are then randomised (the init leaves them 0 and 1, which would hide a
  swapped or transposed bias/scale), and the target encoder is a perturbed copy so that using the
  context encoder's weights for the targets (or the other way round) cannot go unnoticed.
  """
  import functools
  from src.utils.tensors import trunc_normal_   # the release's initialiser, imported, not copied
  torch.manual_seed(seed)
  norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
  encoder = vit.VisionTransformer(
      img_size=[size["image"]], patch_size=size["patch"], in_chans=size["channels"], embed_dim=size["width"],
      depth=size["depth"], num_heads=size["heads"], mlp_ratio=size.get("mlp_ratio", 4), qkv_bias=True,
      norm_layer=norm)
  predictor = vit.vit_predictor(
      num_patches=encoder.patch_embed.num_patches, embed_dim=encoder.embed_dim,
      predictor_embed_dim=size["pred_width"], depth=size["pred_depth"], num_heads=size["pred_heads"])
  with torch.no_grad():
    for model in (encoder, predictor):
      for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
          trunc_normal_(mod.weight, std=0.02)
          if mod.bias is not None:
            mod.bias.zero_()
        elif isinstance(mod, torch.nn.LayerNorm):
          mod.weight.fill_(1.0)
          mod.bias.zero_()
      for name, p in model.named_parameters():
        if p.requires_grad and (name.endswith("bias") or p.ndim == 1):
          p.add_(0.2 * torch.randn_like(p))
  target = vit.VisionTransformer(
      img_size=[size["image"]], patch_size=size["patch"], in_chans=size["channels"], embed_dim=size["width"],
      depth=size["depth"], num_heads=size["heads"], mlp_ratio=size.get("mlp_ratio", 4), qkv_bias=True,
      norm_layer=norm)
  target.load_state_dict(encoder.state_dict())
  with torch.no_grad():
    for p in target.parameters():
      if p.requires_grad:
        p.add_(0.1 * p.std() * torch.randn_like(p) if p.numel() > 1 else 0.01 * torch.randn_like(p))
  for p in target.parameters():
    p.requires_grad = False
  # The release's optimizer (param groups, AdamW) for the checkpoint's 'opt' entry.
  optimizer, scaler, _, _ = helper.init_opt(
      encoder=encoder, predictor=predictor, iterations_per_epoch=1, start_lr=2e-4, ref_lr=1e-3,
      final_lr=1e-6, warmup=1, num_epochs=1, wd=0.04, final_wd=0.4, use_bfloat16=False)
  return encoder, predictor, target, optimizer, scaler


def save_release_checkpoint(torch, path, encoder, predictor, target, optimizer, scaler, batch_size):
  """The dict src/train.py's save_checkpoint writes, with DDP's 'module.' key prefix."""
  def ddp(model):
    return {f"module.{k}": v for k, v in model.state_dict().items()}
  torch.save({"encoder": ddp(encoder), "predictor": ddp(predictor), "target_encoder": ddp(target),
              "opt": optimizer.state_dict(), "scaler": None if scaler is None else scaler.state_dict(),
              "epoch": 1, "loss": 0.0, "batch_size": batch_size, "world_size": 1, "lr": 1e-3}, path)


def release_loss(torch, F, apply_masks, repeat_interleave_batch, encoder, predictor, target,
                 imgs, masks_enc, masks_pred):
  """src/train.py's forward for one batch (world size 1): the smooth-L1 loss, differentiable."""
  with torch.no_grad():
    h = target(imgs)
    h = F.layer_norm(h, (h.size(-1),))
    b = len(h)
    h = apply_masks(h, masks_pred)
    h = repeat_interleave_batch(h, b, repeat=len(masks_enc))
  z = encoder(imgs, masks_enc)
  z = predictor(z, masks_enc, masks_pred)
  return F.smooth_l1_loss(z, h)   # AllReduce is the identity for one process


def release_step(torch, F, apply_masks, repeat_interleave_batch, encoder, predictor, target,
                 imgs, masks_enc, masks_pred):
  """src/train.py's forward and backward for one batch (fp32 unless under an autocast)."""
  encoder.zero_grad(set_to_none=True)
  predictor.zero_grad(set_to_none=True)
  loss = release_loss(torch, F, apply_masks, repeat_interleave_batch, encoder, predictor, target,
                      imgs, masks_enc, masks_pred)
  loss.backward()
  return loss.detach()


def grads_as_release(model, pos_key: str) -> dict[str, np.ndarray]:
  """A release state dict holding the .grad of every trainable tensor (the fixed pos_embed as is)."""
  out = {}
  for name, p in model.named_parameters():
    if name == pos_key:
      out[name] = p.detach().numpy()       # not trained: no grad; only compared with ours by the converter
    elif p.grad is None:
      raise RuntimeError(f"release {name} has no gradient after backward")
    else:
      out[name] = p.grad.detach().numpy().copy()
  return out


def by_block(release_out, batch: int, blocks: int):
  """The release's mask-major [M*B, K, D] -> our [B, M, K, D]."""
  x = np.asarray(release_out)
  return x.reshape(blocks, batch, *x.shape[1:]).swapaxes(0, 1)


# ============================================================================ one size
def run_size(size: dict, release_modules, workdir: str, seed: int = 0):
  """Returns (rows, leaf_rows): rows are (quantity, rel err); leaf_rows (tree path, rel err)."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util
  from ijepa_jax import convert, sharding, step, train
  from ijepa_jax.masks import MultiBlockSampler
  from ijepa_jax.models import make_models
  torch, F, vit, helper, apply_masks, repeat_interleave_batch = release_modules

  config = our_config(size)
  enc_t, pred_t, target_t, optimizer, scaler = release_models(torch, vit, helper, size, seed)
  path = os.path.join(workdir, f"{size['name']}-latest.pth.tar")
  save_release_checkpoint(torch, path, enc_t, pred_t, target_t, optimizer, scaler, size["batch"])

  # Our side: the converter's own path from the file.
  built = convert.build_abstract(config)
  enc_p, pred_p, target_p = convert.release_params(config, built[1], convert.read_release(path))
  state = convert.make_state(built, enc_p, target_p, pred_p)
  encoder, predictor = make_models(config.model, config.data.image_size, config.data.channels, jnp.float32)

  # One batch: uint8 images (for make_train_step), their normalised float32 copy for everything else,
  # and masks from our sampler (same indices on both sides).
  rng = np.random.default_rng(seed)
  b, c, s = size["batch"], size["channels"], size["image"]
  u8 = rng.integers(0, 256, size=(b, s, s, c), dtype=np.uint8)
  images = ((u8.astype(np.float32) / np.float32(255.0) - np.asarray(size["mean"], np.float32))
            / np.asarray(size["std"], np.float32)).astype(np.float32)            # NHWC
  imgs_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NCHW
  sampler = MultiBlockSampler.from_config(config.mask, s // size["patch"])
  masks = sampler(rng, b)
  ctx_idx, tgt_idx = masks["context_idx"], masks["target_idx"]   # [B, Kc], [B, M, Kt]
  m = tgt_idx.shape[1]
  masks_enc = [torch.from_numpy(ctx_idx.astype(np.int64))]
  masks_pred = [torch.from_numpy(np.ascontiguousarray(tgt_idx[:, i]).astype(np.int64)) for i in range(m)]
  rows = []

  # Encoders: target encoder on the full image, context encoder on the context tokens.
  with torch.no_grad():
    full_t = target_t(imgs_t).numpy()
    ctx_t = enc_t(imgs_t, masks_enc).numpy()
  apply_enc = jax.jit(encoder.apply)
  rows.append(("target encoder output, full image", rel_err(apply_enc({"params": target_p}, images), full_t)))
  rows.append(("context encoder output, context tokens",
               rel_err(apply_enc({"params": enc_p}, images, ctx_idx), ctx_t)))
  # The same target encoder through the user's path: convert CLI -> workdir -> extract CLI.
  rows.append(("CLIs: convert --torch, then extract (target) vs release target_encoder",
               rel_err(cli_features(config, path, images, workdir, size["name"]), full_t)))

  # (a) Predictor on a random context (std 1: larger than encoder outputs, so errors are not hidden).
  context = rng.standard_normal((b, ctx_idx.shape[1], size["width"])).astype(np.float32)
  with torch.no_grad():
    pred_out_t = pred_t(torch.from_numpy(context), masks_enc, masks_pred).numpy()
  pred_out = jax.jit(predictor.apply)({"params": pred_p}, context, ctx_idx, tgt_idx)
  rows.append(("predictor output (random context)", rel_err(pred_out, by_block(pred_out_t, b, m))))
  # ... and on the context encoder's output, as in training.
  with torch.no_grad():
    pred_out_t = pred_t(torch.from_numpy(ctx_t), masks_enc, masks_pred).numpy()
  pred_out = jax.jit(predictor.apply)({"params": pred_p}, np.asarray(ctx_t), ctx_idx, tgt_idx)
  rows.append(("predictor output (encoder context)", rel_err(pred_out, by_block(pred_out_t, b, m))))

  # (b) One training step: loss and every gradient.
  loss_t = release_step(torch, F, apply_masks, repeat_interleave_batch, enc_t, pred_t, target_t,
                        imgs_t, masks_enc, masks_pred)

  def loss_fn(params, target_params, images, context_idx, target_idx):
    # make_train_step's loss_fn, with float images instead of normalise(uint8).
    targets = step.target_features(encoder, target_params, images, target_idx)
    ctx = encoder.apply({"params": params["encoder"]}, images, context_idx)
    preds = predictor.apply({"params": params["predictor"]}, ctx, context_idx, target_idx)
    return step.prediction_loss(preds, targets, config.loss)

  params = {"encoder": enc_p, "predictor": pred_p}
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, target_p, images, ctx_idx, tgt_idx)
  rows.append(("loss (smooth-L1)", rel_err(loss, loss_t.numpy())))

  # torch's grads -> our tree through the converter (same mapping as the weights).
  grad_ckpt = {"encoder": grads_as_release(enc_t, "pos_embed"),
               "predictor": grads_as_release(pred_t, "predictor_pos_embed"),
               "target_encoder": {k: v.numpy() for k, v in target_t.state_dict().items()}}
  genc_t, gpred_t, _ = convert.release_params(config, built[1], grad_ckpt)
  theirs = traverse_util.flatten_dict({"encoder": genc_t, "predictor": gpred_t})
  ours = traverse_util.flatten_dict(jax.device_get(grads))
  if set(theirs) != set(ours):
    raise RuntimeError(f"gradient trees differ: {sorted(set(theirs) ^ set(ours))}")
  leaf_rows = [("/".join(k), rel_err(ours[k], theirs[k])) for k in sorted(ours)]
  for part in ("encoder", "predictor"):
    errs = [(e, p) for p, e in leaf_rows if p.startswith(part + "/")]
    worst, where = max(errs)
    rows.append((f"{part} gradients, worst of {len(errs)} leaves ({where.split('/', 1)[1]})", worst))

  # The real jitted step (uint8 in, normalised on device): its reported loss and gradient norm.
  config.mesh.data, config.mesh.fsdp = 1, 1
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  *_, train_step = train.build(config, mesh, sampler, total_steps=1, warmup_steps=0)
  batch = {"images": u8, "skipped": np.zeros((b,), np.int32), "context_idx": ctx_idx, "target_idx": tgt_idx}
  _, metrics = train.run_step(train_step, mesh, config, state, batch)
  grad_norm_t = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in theirs.values()))
  rows.append(("make_train_step: loss metric", rel_err(metrics["loss"], loss_t.numpy())))
  rows.append(("make_train_step: grad_norm metric", rel_err(metrics["grad_norm"], grad_norm_t)))
  shapes = dict(context=int(ctx_idx.shape[1]), targets=int(m), target_tokens=int(tgt_idx.shape[2]),
                loss=float(loss_t))
  rows += collator_rows(size, release_modules, (enc_t, pred_t, target_t), (built, enc_p, pred_p, target_p),
                        config, seed)
  fp32 = dict(full=full_t, ctx=ctx_t, pred=pred_out_t, grads=theirs)
  bf16 = bf16_rows(config, release_modules, (enc_t, pred_t, target_t), (built, enc_p, pred_p, target_p), fp32,
                   (u8, images, imgs_t, ctx_idx, tgt_idx, masks_enc, masks_pred))
  return rows, leaf_rows, shapes, bf16


# ============================================================================ the release's own masks
SHARDS = 2   # per-GPU batches of the release (its MaskCollator runs once per GPU batch), averaged by DDP


def collator_rows(size: dict, release_modules, release_nets, ours, config, seed: int):
  """The release's MaskCollator draws the masks (variable lengths from batch to batch: whole target
  blocks, contexts truncated to each batch's shortest); SHARDS per-GPU batches of `size['batch']` images
  with different lengths; the release's step on each and its gradients averaged (DDP); ours: one step
  on all of them with `mask.counts='release'`'s padded layout (the release's masks padded with counts)."""
  import copy
  import jax
  from flax import traverse_util
  from ijepa_jax import convert, sharding, step, train
  from ijepa_jax.masks import MultiBlockSampler
  from ijepa_jax.models import make_models
  from src.masks.multiblock import MaskCollator
  torch, F, vit, helper, apply_masks, repeat_interleave_batch = release_modules
  enc_t, pred_t, target_t = release_nets
  built, enc_p, pred_p, target_p = ours
  c = copy.deepcopy(config)
  c.mask.counts, c.mask.mode = "release", "release"
  c.batch_size, c.mask.reference_batch = SHARDS * size["batch"], size["batch"]
  b, s, p, ch = size["batch"], size["image"], size["patch"], size["channels"]
  sampler = MultiBlockSampler.from_config(c.mask, s // p)   # only its padded lengths are used here
  collator = MaskCollator(input_size=(s, s), patch_size=p, enc_mask_scale=tuple(c.mask.context_scale),
                          pred_mask_scale=tuple(c.mask.target_scale), aspect_ratio=tuple(c.mask.target_aspect),
                          nenc=1, npred=c.mask.num_targets, min_keep=c.mask.min_keep, allow_overlap=False)
  torch.manual_seed(seed)   # the collator's per-image draws use torch's global generator
  shards = []
  for _ in range(1000):   # per-GPU batches whose context and target lengths both differ, so that padding
    _, masks_enc, masks_pred = collator([torch.zeros(1) for _ in range(b)])   # and the loss's weighting show
    lengths = (masks_enc[0].shape[1], masks_pred[0].shape[1])
    if all(lengths[0] != other[0] and lengths[1] != other[1] for *_, other in shards):
      shards.append((masks_enc, masks_pred, lengths))
    if len(shards) == SHARDS:
      break
  else:
    raise RuntimeError(f"{size['name']}: no {SHARDS} release batches of different lengths in 1000 draws")

  rng = np.random.default_rng(seed + 1)
  u8 = rng.integers(0, 256, size=(SHARDS * b, s, s, ch), dtype=np.uint8)
  images = ((u8.astype(np.float32) / np.float32(255.0) - np.asarray(size["mean"], np.float32))
            / np.asarray(size["std"], np.float32)).astype(np.float32)
  imgs_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

  # The release: one step per per-GPU batch; DDP averages the gradients, the logged loss is the average.
  losses, grads_t = [], []
  for j, (masks_enc, masks_pred, _) in enumerate(shards):
    losses.append(float(release_step(torch, F, apply_masks, repeat_interleave_batch, enc_t, pred_t, target_t,
                                     imgs_t[j * b:(j + 1) * b], masks_enc, masks_pred)))
    grads_t.append({"encoder": grads_as_release(enc_t, "pos_embed"),
                    "predictor": grads_as_release(pred_t, "predictor_pos_embed")})
  mean_grads = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *grads_t)
  grad_ckpt = {**mean_grads, "target_encoder": {k: v.numpy() for k, v in target_t.state_dict().items()}}
  genc_t, gpred_t, _ = convert.release_params(c, built[1], grad_ckpt)
  theirs = traverse_util.flatten_dict({"encoder": genc_t, "predictor": gpred_t})

  # Ours: the release's index lists padded to the sampler's static lengths, with their real counts.
  m = c.mask.num_targets
  batch = {"images": u8, "skipped": np.zeros((SHARDS * b,), np.int32),
           "context_idx": np.zeros((SHARDS * b, sampler.num_context), np.int32),
           "context_count": np.zeros((SHARDS * b,), np.int32),
           "target_idx": np.zeros((SHARDS * b, m, sampler.num_target), np.int32),
           "target_count": np.zeros((SHARDS * b,), np.int32), "context_cut": np.zeros((SHARDS * b,), np.int32)}
  for j, (masks_enc, masks_pred, (kc, kt)) in enumerate(shards):
    rows = slice(j * b, (j + 1) * b)
    batch["context_idx"][rows, :kc] = masks_enc[0].numpy()
    batch["target_idx"][rows, :, :kt] = np.stack([t.numpy() for t in masks_pred], axis=1)
    batch["context_count"][rows], batch["target_count"][rows] = kc, kt
  encoder, predictor = make_models(c.model, s, ch, np.float32)

  def loss_fn(params, target_params, images, cidx, tidx, ccount, tcount):
    targets = step.target_features(encoder, target_params, images, tidx)
    ctx = encoder.apply({"params": params["encoder"]}, images, cidx, ccount)
    preds = predictor.apply({"params": params["predictor"]}, ctx, cidx, tidx, ccount, tcount)
    return step.prediction_loss(preds, targets, c.loss, tcount)

  params = {"encoder": enc_p, "predictor": pred_p}
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(
      params, target_p, images, batch["context_idx"], batch["target_idx"], batch["context_count"],
      batch["target_count"])
  ours_flat = traverse_util.flatten_dict(jax.device_get(grads))
  label = (f"release MaskCollator masks, {SHARDS} GPU batches (context {' / '.join(str(l[0]) for *_, l in shards)}, "
           f"target blocks {' / '.join(str(l[1]) for *_, l in shards)} tokens; padded to {sampler.num_context} / "
           f"{sampler.num_target})")
  out = [(f"{label}: loss (mean over GPU batches)", rel_err(loss, np.mean(losses)))]
  leaf = [("/".join(k), rel_err(ours_flat[k], theirs[k])) for k in sorted(ours_flat)]
  for part in ("encoder", "predictor"):
    worst, where = max((e, q) for q, e in leaf if q.startswith(part + "/"))
    out.append((f"{label}: {part} gradients (DDP mean), worst leaf ({where.split('/', 1)[1]})", worst))
  # The jitted step with that batch, as train.py feeds it.
  c.mesh.data, c.mesh.fsdp = 1, 1
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  *_, train_step = train.build(c, mesh, sampler, total_steps=1, warmup_steps=0)
  _, metrics = train.run_step(train_step, mesh, c, convert.make_state(built, enc_p, target_p, pred_p), batch)
  grad_norm_t = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in theirs.values()))
  out.append((f"{label}: make_train_step loss metric", rel_err(metrics["loss"], np.mean(losses))))
  out.append((f"{label}: make_train_step grad_norm metric", rel_err(metrics["grad_norm"], grad_norm_t)))
  return out


# ============================================================================ bf16
def rel_l2(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if ours.shape != theirs.shape:
    return float("inf")
  return float(np.linalg.norm(ours - theirs) / max(float(np.linalg.norm(theirs)), TINY))


def _concat(tree: dict, part: str) -> np.ndarray:
  return np.concatenate([np.ravel(v) for k, v in sorted(tree.items()) if k[0] == part])


def bf16_rows(config, release_modules, release_nets, ours, fp32, batch):
  """[(quantity, d(ours bf16, release bf16), d(release bf16, release fp32))] for one batch."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util
  from cuda_autocast import cuda_autocast
  from ijepa_jax import convert, sharding, step, train
  from ijepa_jax.masks import MultiBlockSampler
  from ijepa_jax.models import make_models
  torch, F, vit, helper, apply_masks, repeat_interleave_batch = release_modules
  enc_t, pred_t, target_t = release_nets
  built, enc_p, pred_p, target_p = ours   # the converted release weights (the fp32 step donated its state)
  u8, images, imgs_t, ctx_idx, tgt_idx, masks_enc, masks_pred = batch
  b, m = len(u8), tgt_idx.shape[1]
  encoder, predictor = make_models(config.model, config.data.image_size, config.data.channels, jnp.bfloat16)

  with torch.no_grad(), cuda_autocast(torch):
    full_t = target_t(imgs_t).float().numpy()
    ctx_t = enc_t(imgs_t, masks_enc).float().numpy()
    pred_t_out = pred_t(torch.from_numpy(fp32["ctx"]), masks_enc, masks_pred).float().numpy()
  with cuda_autocast(torch):
    release_step(torch, F, apply_masks, repeat_interleave_batch, enc_t, pred_t, target_t,
                 imgs_t, masks_enc, masks_pred)
  grad_ckpt = {"encoder": grads_as_release(enc_t, "pos_embed"),
               "predictor": grads_as_release(pred_t, "predictor_pos_embed"),
               "target_encoder": {k: v.numpy() for k, v in target_t.state_dict().items()}}
  genc_t, gpred_t, _ = convert.release_params(config, built[1], grad_ckpt)
  grads_t = traverse_util.flatten_dict({"encoder": genc_t, "predictor": gpred_t})

  apply_enc = jax.jit(encoder.apply)
  full = apply_enc({"params": target_p}, images)
  ctx = apply_enc({"params": enc_p}, images, ctx_idx)
  pred = jax.jit(predictor.apply)({"params": pred_p}, np.asarray(fp32["ctx"]), ctx_idx, tgt_idx)

  def loss_fn(params, images, ctx_idx, tgt_idx):
    targets = step.target_features(encoder, target_p, images, tgt_idx)
    c = encoder.apply({"params": params["encoder"]}, images, ctx_idx)
    preds = predictor.apply({"params": params["predictor"]}, c, ctx_idx, tgt_idx)
    return step.prediction_loss(preds, targets, config.loss)

  params = {"encoder": enc_p, "predictor": pred_p}
  _, grads = jax.jit(jax.value_and_grad(loss_fn))(params, images, ctx_idx, tgt_idx)
  grads = traverse_util.flatten_dict(jax.device_get(grads))

  # The loss is one mean over ~1e4 elements: its bf16 error on one batch is a single draw, so the loss
  # rows compare the RMS relative error over LOSS_BATCHES batches (this one and fresh ones), through our
  # loss function and through the real jitted bf16 step (uint8 images normalised on device).
  c = config.copy_and_resolve_references()
  c.dtype = "bfloat16"
  c.mesh.data, c.mesh.fsdp = 1, 1
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  sampler = MultiBlockSampler.from_config(c.mask, c.data.image_size // c.model.patch_size)
  *_, train_step = train.build(c, mesh, sampler, total_steps=1, warmup_steps=0)
  ours_loss = jax.jit(loss_fn)
  rng = np.random.default_rng(1)
  rel = {"ours": [], "step": [], "own": []}
  for i in range(LOSS_BATCHES):
    if i:
      u8 = rng.integers(0, 256, size=u8.shape, dtype=np.uint8)
      masks = sampler(rng, b)
      ctx_idx, tgt_idx = masks["context_idx"], masks["target_idx"]
      masks_enc = [torch.from_numpy(ctx_idx.astype(np.int64))]
      masks_pred = [torch.from_numpy(np.ascontiguousarray(tgt_idx[:, j]).astype(np.int64)) for j in range(m)]
    images = ((u8.astype(np.float32) / np.float32(255.0) - np.asarray(c.data.mean, np.float32))
              / np.asarray(c.data.std, np.float32)).astype(np.float32)
    imgs_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    args = (torch, F, apply_masks, repeat_interleave_batch, enc_t, pred_t, target_t, imgs_t, masks_enc, masks_pred)
    with torch.no_grad():
      l32 = float(release_loss(*args))
      with cuda_autocast(torch):
        l16 = float(release_loss(*args))
    real = {"images": u8, "skipped": np.zeros((b,), np.int32), "context_idx": ctx_idx, "target_idx": tgt_idx}
    _, metrics = train.run_step(train_step, mesh, c, convert.make_state(built, enc_p, target_p, pred_p), real)
    rel["ours"].append((float(ours_loss(params, images, ctx_idx, tgt_idx)) - l16) / l16)
    rel["step"].append((float(metrics["loss"]) - l16) / l16)
    rel["own"].append((l16 - l32) / l32)
  rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in rel.items()}

  rows = [("target encoder output, full image", rel_l2(full, full_t), rel_l2(full_t, fp32["full"])),
          ("context encoder output, context tokens", rel_l2(ctx, ctx_t), rel_l2(ctx_t, fp32["ctx"])),
          ("predictor output (fp32 encoder context)", rel_l2(pred, by_block(pred_t_out, b, m)),
           rel_l2(pred_t_out, fp32["pred"])),
          (f"loss (smooth-L1), RMS relative error over {LOSS_BATCHES} batches", rms["ours"], rms["own"]),
          (f"make_train_step: loss metric, RMS over {LOSS_BATCHES} batches", rms["step"], rms["own"])]
  for part in ("encoder", "predictor"):
    rows.append((f"{part} gradients, all leaves", rel_l2(_concat(grads, part), _concat(grads_t, part)),
                 rel_l2(_concat(grads_t, part), _concat(fp32["grads"], part))))
  leaf_ratio = {"/".join(k): (rel_l2(grads[k], grads_t[k]), rel_l2(grads_t[k], fp32["grads"][k])) for k in grads}
  worst = max(leaf_ratio, key=lambda k: leaf_ratio[k][0] / max(leaf_ratio[k][1], TINY))
  rows.append((f"worst gradient leaf by ratio ({worst})", *leaf_ratio[worst]))
  return rows


def vith14_rows(release_modules, workdir: str, seed: int = 0):
  """Features of a release ViT-H/14 (random init, target perturbed) on 2 images, bf16 and fp32."""
  size = dict(name="vith14", image=224, patch=14, channels=3, width=1280, depth=32, heads=16,
              pred_width=384, pred_depth=1, pred_heads=16, batch=2, mask_mode="release",
              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  import jax
  import jax.numpy as jnp
  from cuda_autocast import cuda_autocast
  from ijepa_jax import convert
  from ijepa_jax.models import make_models
  torch, F, vit, helper = release_modules[:4]
  config = our_config(size)
  config.mask.min_keep = 10
  enc_t, pred_t, target_t, optimizer, scaler = release_models(torch, vit, helper, size, seed)
  path = os.path.join(workdir, "vith14-latest.pth.tar")
  save_release_checkpoint(torch, path, enc_t, pred_t, target_t, optimizer, scaler, size["batch"])
  del enc_t, pred_t, optimizer
  built = convert.build_abstract(config)
  _, _, target_p = convert.release_params(config, built[1], convert.read_release(path))
  images = np.random.default_rng(seed).standard_normal((2, 224, 224, 3)).astype(np.float32)
  imgs_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  nudged_t = torch.from_numpy(np.ascontiguousarray(np.nextafter(images, np.float32(np.inf)).transpose(0, 3, 1, 2)))
  with torch.no_grad():
    fp32_t = target_t(imgs_t).numpy()
    with cuda_autocast(torch):
      bf16_t = target_t(imgs_t).float().numpy()
      nudged = target_t(nudged_t).float().numpy()   # every input moved by one fp32 ulp
  out = {}
  for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
    encoder, _ = make_models(config.model, 224, 3, dtype)
    out[name] = np.asarray(jax.jit(encoder.apply)({"params": target_p}, images), np.float32)
  floor = rel_l2(nudged, bf16_t)
  note = (f"ViT-H/14's bf16 features are chaotic in the last bits: moving every input pixel by one fp32 ulp "
          f"moves the release's own bf16 features by {floor:.2e} (relative L2), the floor for any two "
          f"implementations whose roundings differ anywhere (ours: {rel_l2(out['bfloat16'], bf16_t):.2e}).")
  return [("ViT-H/14 target features, fp32: ours vs release fp32", rel_l2(out["float32"], fp32_t), None),
          ("ViT-H/14 target features, bf16: ours vs release autocast", rel_l2(out["bfloat16"], bf16_t),
           rel_l2(bf16_t, fp32_t))], [note]


# ============================================================================ report
def release_commit(path: str, given: str) -> str:
  try:
    out = subprocess.run(["git", "-C", path, "log", "-1", "--format=%h (%s)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    if out:
      return out
  except (OSError, subprocess.CalledProcessError):
    pass
  return f"{given} (as given by --release_commit: the checkout is not a git repository)"


def file_hashes(path: str) -> list[tuple[str, str]]:
  out = []
  for name in RELEASE_FILES:
    with open(os.path.join(path, name), "rb") as f:
      out.append((name, hashlib.sha256(f.read()).hexdigest()[:16]))
  return out


def write_markdown(out, results, extra, notes, header, argv) -> None:
  lines = ["# Parity with the PyTorch release: encoders, predictor, one full training step, convert + extract CLIs", ""]
  lines += [f"- {k}: {v}" for k, v in header]
  lines += [f"- command: `python experiments/release_parity.py {' '.join(argv)}`", "",
            f"Relative error = max|ours - release| / max|release| over the tensor; pass if <= {RTOL:g} (fp32).",
            ""]
  for size, rows, leaf_rows, shapes, _ in results:
    lines += [f"## {size['name']}: {size['image']}px, patch {size['patch']}, {size['channels']} channel(s), "
              f"encoder {size['width']}x{size['depth']} ({size['heads']} heads), predictor "
              f"{size['pred_width']}x{size['pred_depth']} ({size['pred_heads']} heads), batch {size['batch']}, "
              f"mask mode {size['mask_mode']}", "",
              f"{shapes['context']} context tokens, {shapes['targets']} target blocks of "
              f"{shapes['target_tokens']} tokens; release loss {shapes['loss']:.6f}.", "",
              "| quantity | max rel. error | result |", "|---|---|---|"]
    lines += [f"| {q} | {e:.2e} | {'pass' if e <= RTOL else 'FAIL'} |" for q, e in rows]
    lines += ["", "<details><summary>every gradient leaf</summary>", "",
              "| leaf | max rel. error |", "|---|---|"]
    lines += [f"| {p} | {e:.2e} |" for p, e in leaf_rows]
    lines += ["", "</details>", ""]
  lines += ["## bf16: ours (`dtype=bfloat16`) against the release under CUDA's autocast (reproduced on CPU)", "",
            "Relative L2 distance ||a - b|| / ||b||. Pass if ours-vs-release-bf16 <= release-bf16-vs-release-fp32 "
            "(the release's own bf16 error).", "",
            "| size | quantity | ours bf16 vs release bf16 | release bf16 vs release fp32 | ratio | result |",
            "|---|---|---|---|---|---|"]
  for size, *_, bf16 in results:
    for q, ours, own in bf16:
      lines.append(f"| {size['name']} | {q} | {ours:.2e} | {own:.2e} | {ours / max(own, TINY):.2f} | "
                   f"{'pass' if ours <= own else 'FAIL'} |")
  for q, ours, own in extra:
    lines.append(f"| vith14 | {q} | {ours:.2e} | {'' if own is None else f'{own:.2e}'} | "
                 f"{'' if own is None else f'{ours / max(own, TINY):.2f}'} | "
                 f"{'pass' if ours <= (RTOL if own is None else own) else 'FAIL'} |")
  lines += [""] + notes + ([""] if notes else [])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    f.write("\n".join(lines))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--release", required=True, help="checkout of facebookresearch/ijepa (holds src/)")
  parser.add_argument("--out", default=None, help="Markdown results file to write (optional)")
  parser.add_argument("--vith14", action="store_true",
                      help="also compare ViT-H/14 features in bf16 and fp32 (minutes, ~10 GB of RAM)")
  parser.add_argument("--release_commit", default=DEFAULT_COMMIT,
                      help="recorded when the checkout has no .git")
  args = parser.parse_args(argv)
  release = os.path.abspath(args.release)
  # Checked before any heavy import, so that the skip is instant.
  if not os.path.isdir(release):
    print(f"release_parity: skipping: no release checkout at {args.release}")
    return 0
  try:
    import torch
  except ImportError as e:
    print(f"release_parity: skipping: torch is not importable ({e})")
    return 0
  if not os.path.isfile(os.path.join(release, "src", "models", "vision_transformer.py")):
    print(f"release_parity: error: {release} has no src/models/vision_transformer.py: "
          "not a facebookresearch/ijepa checkout", file=sys.stderr)
    return 2

  torch.set_num_threads(min(2, os.cpu_count() or 1))
  # XLA may skip a bf16 rounding the program asks for and keep an fp32 intermediate ("excess precision",
  # on by default on every backend): more precise than the release, but not its rounding points. The bf16
  # rows compare rounding points, so it is off here (no effect on fp32).
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_allow_excess_precision=false").strip()
  sys.path.insert(0, REPO)
  sys.path.insert(0, os.path.join(REPO, "experiments"))   # cuda_autocast
  sys.path.insert(0, release)
  import torch.nn.functional as F
  import src.helper as helper                  # the release's package 'src', from --release
  import src.models.vision_transformer as vit
  from src.masks.utils import apply_masks
  from src.utils.tensors import repeat_interleave_batch
  import logging
  logging.getLogger().setLevel(logging.WARNING)  # the release's modules log at INFO on the root logger
  import jax
  import flax

  modules = (torch, F, vit, helper, apply_masks, repeat_interleave_batch)
  results, failed = [], []
  with tempfile.TemporaryDirectory() as workdir:
    for size in SIZES:
      results.append((size, *run_size(size, modules, workdir)))
    extra, notes = vith14_rows(modules, workdir) if args.vith14 else ([], [])

  width = max(len(q) for _, rows, *_ in results for q, _ in rows) + 8
  print(f"{'quantity':<{width}} {'max rel err':>12}  result")
  for size, rows, *_ in results:
    for q, e in rows:
      ok = e <= RTOL
      failed += [] if ok else [f"{size['name']}: {q}"]
      print(f"{size['name'] + ': ' + q:<{width}} {e:>12.2e}  {'pass' if ok else 'FAIL'}")
  print(f"\nbf16 (relative L2)  {'ours vs release bf16':>22} {'release bf16 vs fp32':>22}  result")
  bf16 = [(size["name"], q, o, w) for size, *_, rows in results for q, o, w in rows]
  for name, q, ours, own in bf16 + [("vith14", q, o, w) for q, o, w in extra]:
    ok = ours <= (RTOL if own is None else own)
    failed += [] if ok else [f"{name} bf16: {q}"]
    print(f"{name + ': ' + q:<{width}} {ours:>12.2e} {'' if own is None else f'{own:>12.2e}':>22}  "
          f"{'pass' if ok else 'FAIL'}")

  for note in notes:
    print(note)
  if args.out:
    import record
    header = [("date", record.utc_date()), ("machine", record.machine()),
              ("versions", f"torch {torch.__version__}, jax {jax.__version__}, flax {flax.__version__}, "
                           f"numpy {np.__version__}, Python {platform.python_version()}"),
              ("release", f"facebookresearch/ijepa {release_commit(release, args.release_commit)}"),
              ("release files used (sha256, first 16 hex)",
               ", ".join(f"`{n}` {h}" for n, h in file_hashes(release))),
              ("result", "all pass" if not failed else f"{len(failed)} FAILED: {'; '.join(failed)}")]
    shown = [f"--release={args.release}", f"--out={args.out}"] + (["--vith14"] if args.vith14 else [])
    write_markdown(args.out, results, extra, notes, header, shown)
    print(f"wrote {args.out}")
  if failed:
    print(f"release_parity: {len(failed)} check(s) above {RTOL:g}: {'; '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
