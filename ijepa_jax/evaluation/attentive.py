"""Attentive probe: one learned query cross-attends over frozen patch tokens, then a linear classifier.

Average pooling throws away where things are; later JEPA work (V-JEPA, I-JEPA's follow-ups) evaluates
frozen tokens with this small attentive head instead. Protocol as the linear probe's: (lr, weight
decay) chosen on a held-out 10% of train, then refit on all of train and scored on test. Trained with
AdamW under a cosine schedule, minibatches in one jitted scan per epoch, deterministic from `seed`.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class AttentiveProbe(nn.Module):
  """tokens [B, T, D] -> logits [B, num_classes]."""

  num_classes: int
  num_heads: int

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    b, _, d = tokens.shape
    x = nn.LayerNorm(epsilon=1e-6, name="norm_tokens")(tokens)
    query = self.param("query", nn.initializers.normal(stddev=0.02), (1, 1, d))
    pooled = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="cross_attention")(
        jnp.broadcast_to(query, (b, 1, d)), x)[:, 0]
    pooled = nn.LayerNorm(epsilon=1e-6, name="norm_pooled")(pooled)
    return nn.Dense(self.num_classes, name="head")(pooled)


def heads_for(width: int, wanted: int = 4) -> int:
  """The largest head count <= wanted that divides the token width."""
  return max(h for h in range(1, wanted + 1) if width % h == 0)


def _optimizer(lr, weight_decay, steps: int) -> optax.GradientTransformation:
  return optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("model", "steps_per_epoch", "batch_size", "epochs"))
def _epoch(carry, epoch_key, xs, ys, lr, weight_decay, model: nn.Module, steps_per_epoch: int, batch_size: int,
           epochs: int):
  """One epoch of AdamW (lr cosine-decayed over all epochs) on shuffled minibatches: one program for every
  epoch and every (lr, weight decay) of a sweep."""
  tx = _optimizer(lr, weight_decay, epochs * steps_per_epoch)
  order = jax.random.permutation(epoch_key, len(xs))[: steps_per_epoch * batch_size]

  def loss(p, xb, yb):
    logits = model.apply({"params": p}, xb.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, idx):
    p, s = carry
    grads = jax.grad(loss)(p, xs[idx], ys[idx])
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), None

  return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch_size))[0]


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, lr: float, weight_decay: float, epochs: int,
        batch_size: int, seed: int, num_heads: int = 4):
  """Returns (model, params) trained on tokens x [N, T, D] with labels y."""
  model = AttentiveProbe(num_classes, heads_for(x.shape[-1], num_heads))
  batch_size = min(batch_size, len(x))
  steps_per_epoch = len(x) // batch_size
  key = jax.random.key(seed)
  params = model.init(key, jnp.zeros((1, *x.shape[1:]), jnp.float32))["params"]
  xs, ys = jnp.asarray(x), jnp.asarray(y, jnp.int32)
  carry = (params, _optimizer(lr, weight_decay, epochs * steps_per_epoch).init(params))
  for k in jax.random.split(jax.random.fold_in(key, 1), epochs):
    carry = _epoch(carry, k, xs, ys, jnp.float32(lr), jnp.float32(weight_decay), model=model,
                   steps_per_epoch=steps_per_epoch, batch_size=batch_size, epochs=epochs)
  return model, carry[0]


@functools.partial(jax.jit, static_argnames="model")
def _predict(params, xb, model: nn.Module):
  return jnp.argmax(model.apply({"params": params}, xb.astype(jnp.float32)), -1)


def accuracy(model, params, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
  pred = np.concatenate([np.asarray(_predict(params, jnp.asarray(x[i:i + batch_size]), model=model))
                         for i in range(0, len(x), batch_size)])
  return float(np.mean(pred == y))


def probe(train_x, train_y, test_x, test_y, lrs, weight_decays, epochs: int, batch_size: int = 256,
          seed: int = 0) -> dict:
  """Choose (lr, weight decay) on held-out train, refit on all of train, score on test. Tokens are first
  standardised per channel with train statistics (over examples and positions, so the tokens keep
  their positional part): as for the linear probe, the features' large shared component otherwise
  hides the part that differs between images, and the probe learns ~5x slower."""
  mu = train_x.mean((0, 1), dtype=np.float64).astype(np.float32)
  sd = train_x.std((0, 1), dtype=np.float64).astype(np.float32) + 1e-6
  train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  perm = np.random.default_rng(seed).permutation(len(train_x))
  held, fit_idx = perm[: len(perm) // 10], perm[len(perm) // 10:]
  scores = {}
  for lr in lrs:
    for wd in weight_decays:
      model, p = fit(train_x[fit_idx], train_y[fit_idx], num_classes, lr, wd, epochs, batch_size, seed)
      scores[(lr, wd)] = accuracy(model, p, train_x[held], train_y[held])
  lr, wd = max(scores, key=scores.get)
  model, p = fit(train_x, train_y, num_classes, lr, wd, epochs, batch_size, seed)
  return {"top1": accuracy(model, p, test_x, test_y), "lr": lr, "weight_decay": wd,
          "heldout_top1": scores[(lr, wd)]}
