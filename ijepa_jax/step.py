"""The I-JEPA train step: one pure function of (state, batch).

  targets  = LN(target_encoder(full image))[target blocks]        (no gradient)
             or, target='pixels' (the paper's Table 7 ablation): each target patch's pixels of the normalised
             image, normalised per patch as MAE does; the target encoder is then not run (its EMA update
             still is: it is cheap, and the probes read the target encoder as for representation targets)
  context  = context_encoder(image tokens at context_idx)
  preds    = predictor(context, context_idx, target_idx)           (one sequence per target block)
  loss     = smooth-L1 (release) or L2 (paper) between preds and targets, mean over all elements
             (padded masks, mask.counts='release': padding never attended to, the mean over real elements
             per image, averaged over images)
             (optionally accumulated over micro-batches of the batch: grad_accum_steps)
  params  <- AdamW(grad loss);  target <- m * target + (1 - m) * params.encoder   (after the update)

A step whose loss or gradients are not finite is flagged in the metrics ('nonfinite'); with
skip_nonfinite it also leaves params, target and Adam's state as they were, while `step` and every
schedule (lr, weight decay, EMA momentum) advance, as in the release (GradScaler skips the update).
"""
from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from ijepa_jax import optim

LOSSES = ("smooth_l1", "l2")
TARGETS = ("representation", "pixels")


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any         # {'encoder': context-encoder params, 'predictor': predictor params}
  target: Any         # target-encoder params: an EMA of params['encoder'], never differentiated
  opt_state: Any


def normalise(images: jax.Array, mean, std) -> jax.Array:
  """uint8 [B, H, W, C] -> float32, (x / 255 - mean) / std per channel (done on device)."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def prediction_loss(preds: jax.Array, targets: jax.Array, kind: str, target_count: jax.Array | None = None):
  """The mean over all elements of preds / targets [B, M, Kt, D]. With target_count [B] (padded target
  blocks: the first target_count[b] tokens of row b's blocks are real), each row's mean over its real
  elements, averaged over rows: the release's mean over each per-GPU batch (whose blocks share one
  length), averaged over the GPUs as DDP averages their gradients, when rows are grouped in equal shards."""
  diff = preds.astype(jnp.float32) - targets.astype(jnp.float32)
  if kind == "l2":
    elements = jnp.square(diff)
  elif kind == "smooth_l1":  # torch's smooth_l1_loss with beta = 1
    a = jnp.abs(diff)
    elements = jnp.where(a < 1.0, 0.5 * jnp.square(diff), a - 0.5)
  else:
    raise ValueError(f"loss {kind!r} is not one of {LOSSES}")
  if target_count is None:
    return jnp.mean(elements)
  b, m, kt, d = elements.shape
  real = jnp.arange(kt) < target_count[:, None]                              # [B, Kt]
  per_row = jnp.where(real[:, None, :, None], elements, 0.0).sum(axis=(1, 2, 3))
  return jnp.mean(per_row / (m * d * target_count.astype(jnp.float32)))


def target_features(encoder: nn.Module, target_params, images, target_idx) -> jax.Array:
  """LN(target_encoder(images)) gathered at the target blocks: [B, M, Kt, D], float32."""
  h = encoder.apply({"params": target_params}, images).astype(jnp.float32)
  mean = h.mean(-1, keepdims=True)
  var = jnp.square(h - mean).mean(-1, keepdims=True)
  h = (h - mean) * jax.lax.rsqrt(var + 1e-5)  # torch F.layer_norm: no affine, eps 1e-5
  b, m, k = target_idx.shape
  h = jnp.take_along_axis(h, target_idx.reshape(b, m * k, 1), axis=1)
  return jax.lax.stop_gradient(h.reshape(b, m, k, -1))


def pixel_targets(images: jax.Array, target_idx: jax.Array, patch_size: int) -> jax.Array:
  """Each target patch's pixels [B, M, Kt, p*p*C] (row, column, channel order), normalised over the patch's
  p*p*C values as MAE's norm_pix_loss: (x - mean) / sqrt(var + 1e-6), var unbiased as torch's Tensor.var."""
  p, c = patch_size, images.shape[-1]
  x = einops.rearrange(images.astype(jnp.float32), "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)  # row-major tokens
  b, m, k = target_idx.shape
  x = jnp.take_along_axis(x, target_idx.reshape(b, m * k, 1), axis=1).reshape(b, m, k, p * p * c)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).sum(-1, keepdims=True) / max(p * p * c - 1, 1)
  return jax.lax.stop_gradient((x - mean) * jax.lax.rsqrt(var + 1e-6))


def make_train_step(encoder: nn.Module, predictor: nn.Module, tx: optax.GradientTransformation,
                    schedules: optim.Schedules, loss: str, mean, std, skip_nonfinite: bool = False,
                    grad_accum_steps: int = 1, target: str = "representation", patch_size: int = 0):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings in train.py.

  grad_accum_steps > 1 splits the batch into that many micro-batches, each spread over every device
  (micro-batch j holds rows j, j + k, j + 2k, ... of the batch, so no row moves between devices), and
  averages their losses and gradients in a scan: activations of one micro-batch at a time, then one
  AdamW update and one EMA update, as for the whole batch.
  target: 'representation' (I-JEPA) or 'pixels' (pixel_targets; needs patch_size).
  """
  k = grad_accum_steps
  if target not in TARGETS:
    raise ValueError(f"target {target!r} is not one of {TARGETS}")

  def loss_and_grads(state: TrainState, images, context_idx, target_idx, context_count, target_count):
    if target == "pixels":
      targets = pixel_targets(images, target_idx, patch_size)
    else:
      targets = target_features(encoder, state.target, images, target_idx)

    def loss_fn(params):
      context = encoder.apply({"params": params["encoder"]}, images, context_idx, context_count)
      preds = predictor.apply({"params": params["predictor"]}, context, context_idx, target_idx,
                              context_count, target_count)
      return prediction_loss(preds, targets, loss, target_count)

    return jax.value_and_grad(loss_fn)(state.params)

  def train_step(state: TrainState, batch: dict):
    # counts: present with mask.counts='release' (padded masks), absent (None) with 'fixed'
    inputs = (normalise(batch["images"], mean, std), batch["context_idx"], batch["target_idx"],
              batch.get("context_count"), batch.get("target_count"))
    if k == 1:
      value, grads = loss_and_grads(state, *inputs)
    else:
      micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), inputs)
      add = lambda acc, mb: (jax.tree.map(jnp.add, acc, loss_and_grads(state, *mb)), None)
      zero = (jnp.zeros([], jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
      value, grads = jax.tree.map(lambda x: x / k, jax.lax.scan(add, zero, micro)[0])

    opt_state = optim.at_step(state.opt_state, schedules, state.step)   # this step's lr and weight decay
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m = schedules.momentum(state.step)
    target = jax.tree.map(lambda t, p: m * t + (1.0 - m) * p, state.target, params["encoder"])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    new = (params, target, opt_state)
    if skip_nonfinite:
      new = jax.tree.map(lambda n, old: jnp.where(finite, n, old), new, (state.params, state.target, state.opt_state))
    metrics = {"loss": value, "grad_norm": grad_norm, "nonfinite": 1 - finite.astype(jnp.int32),
               "skipped_images": jnp.sum(batch["skipped"])}  # undecodable files replaced, all processes
    if "context_cut" in batch:   # mask.counts='release' with a num_context cap: context tokens it cut
      metrics["context_tokens_cut"] = jnp.sum(batch["context_cut"])
    return TrainState(state.step + 1, *new), metrics

  return train_step
