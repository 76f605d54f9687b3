"""AdamW with the release's weight-decay exclusions, and the three schedules of I-JEPA.

All schedules take the 0-based index of the train step. The release advances its lr and wd
schedulers *before* each optimiser step (so step i uses the release's counter i + 1) and reads the
EMA momentum for step i as ema0 + i * (ema1 - ema0) / T. We keep both conventions exactly.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ijepa_jax.errors import ConfigError


def lr_schedule(optim_cfg, total_steps: int, warmup_steps: int):
  """Linear warmup start_lr -> lr, then cosine to final_lr (the release's WarmupCosineSchedule)."""
  start, ref, final = optim_cfg.start_lr, optim_cfg.lr, optim_cfg.final_lr
  decay_steps = max(1, total_steps - warmup_steps)

  def fn(step):
    s = jnp.asarray(step, jnp.float32) + 1.0
    warm = start + s / max(1, warmup_steps) * (ref - start)
    progress = (s - warmup_steps) / decay_steps
    cosine = final + (ref - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(s < warmup_steps, warm, jnp.maximum(final, cosine))

  return fn


def wd_schedule(optim_cfg, total_steps: int):
  """Weight decay weight_decay -> final_weight_decay: cosine (release) or linear (paper)."""
  ref, final = optim_cfg.weight_decay, optim_cfg.final_weight_decay
  kind = optim_cfg.get("wd_schedule", "cosine")
  if kind not in ("cosine", "linear"):
    raise ConfigError(f"optim.wd_schedule={kind!r}: use 'cosine' (release) or 'linear' (paper).")

  def fn(step):
    progress = (jnp.asarray(step, jnp.float32) + 1.0) / max(1, total_steps)
    if kind == "cosine":
      wd = final + (ref - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
      wd = ref + (final - ref) * progress
    return jnp.clip(wd, min(ref, final), max(ref, final))

  return fn


def momentum_schedule(optim_cfg, total_steps: int):
  """EMA momentum for the target encoder: linear ema[0] -> ema[1] over the run."""
  m0, m1 = optim_cfg.ema

  def fn(step):
    return m0 + jnp.asarray(step, jnp.float32) * (m1 - m0) / max(1, total_steps)

  return fn


def decay_mask(params):
  """Decay matrices, the conv kernel and the mask token; never biases or LayerNorm (1-D) tensors.
  Under a 'blocks' subtree (model.scan_layers) every tensor has a leading layer axis, not counted."""
  def one(path, p):
    stacked = any(getattr(k, "key", None) == "blocks" for k in path)
    return p.ndim - stacked > 1
  return jax.tree_util.tree_map_with_path(one, params)


class _DecayState(NamedTuple):
  count: jax.Array


def _scheduled_weight_decay(schedule, mask_fn) -> optax.GradientTransformation:
  """updates += wd(count) * params on masked leaves (decoupled, as torch's AdamW)."""

  def init(params):
    del params
    return _DecayState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    wd = schedule(state.count)
    updates = jax.tree.map(lambda u, p, m: u + wd * p if m else u, updates, params, mask_fn(params))
    return updates, _DecayState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


# The optimizer-state parts that only count steps for the lr and wd schedules. A skipped step (with
# skip_nonfinite_steps) advances them with `step` and the EMA momentum, as the release's schedulers
# advance every iteration; Adam's moments and its bias-correction count stay, as torch's GradScaler
# skips optimizer.step().
SCHEDULE_STATES = (_DecayState, optax.ScaleByScheduleState)


def keep_all_but_schedules(kept, advanced):
  """The optimizer state `kept`, with the schedules' counters taken from `advanced`."""
  is_schedule = lambda x: isinstance(x, SCHEDULE_STATES)
  return jax.tree.map(lambda k, a: a if is_schedule(k) else k, kept, advanced, is_leaf=is_schedule)


def make_optimizer(optim_cfg, total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
  """torch.optim.AdamW as the release uses it: p -= lr * (adam(g) + wd * p), decay masked."""
  return optax.chain(
      optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
      _scheduled_weight_decay(wd_schedule(optim_cfg, total_steps), decay_mask),
      optax.scale_by_learning_rate(lr_schedule(optim_cfg, total_steps, warmup_steps)),
  )
