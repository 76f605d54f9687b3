"""AdamW with the release's weight-decay exclusions, and the three schedules of I-JEPA.

All schedules take the 0-based index of the train step. The release advances its lr and wd
schedulers *before* each optimiser step (so step i uses the release's counter i + 1) and reads the
EMA momentum for step i as ema0 + i * (ema1 - ema0) / T. We keep both conventions exactly.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

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
  kind = optim_cfg.wd_schedule
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


class Schedules(NamedTuple):
  """The three schedules of a run, each a function of the 0-based train step."""
  lr: Callable
  weight_decay: Callable
  momentum: Callable


def make_schedules(optim_cfg, total_steps: int, warmup_steps: int) -> Schedules:
  return Schedules(lr_schedule(optim_cfg, total_steps, warmup_steps), wd_schedule(optim_cfg, total_steps),
                   momentum_schedule(optim_cfg, total_steps))


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
  """torch.optim.AdamW as the release uses it: p -= lr * (adam(g) + wd * p), decay masked (optax.adamw).

  Its lr and weight decay live in the optimizer state (optax.inject_hyperparams) and are set for each step
  from the train step's own count by `at_step`, never from a counter of optax's: a skipped step (the whole
  optimizer state kept) still advances every schedule, as the release's schedulers advance every iteration.
  b1, b2 and eps stay Python floats (static): 1 - b2 of a float32 b2 = 0.999 is off by 1.3e-5."""
  return optax.inject_hyperparams(optax.adamw, static_args=("mask", "b1", "b2", "eps"))(
      learning_rate=0.0, weight_decay=0.0, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps, mask=decay_mask)


def at_step(opt_state, schedules: Schedules, step):
  """The optimizer state with the lr and weight decay of train step `step`."""
  return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": schedules.lr(step),
                                         "weight_decay": schedules.weight_decay(step)})
