"""The paper's ImageNet linear probe, for splits whose features do not fit in memory: minibatches streamed from
the feature shards (ijepa_jax.evaluation.shards), sharded over the mesh.

Protocol (I-JEPA, appendix A.2, after MAE and VISSL): average-pooled features of the frozen target encoder
(last layer, or the last 4 layers concatenated), a BatchNorm without affine before the linear head (here: each
feature standardised with the train split's statistics, what that BatchNorm does at test time), LARS, batch
16384, 50 epochs, the learning rate divided by 10 every 15 epochs, reference learning rates {0.01, 0.05, 0.001}
(scaled by batch / 256, as MAE does) and weight decays {0.0005, 0}. On a split smaller than ImageNet-1k's
1,281,167 train examples the batch shrinks to keep ImageNet's 78 steps an epoch, at ImageNet's learning rate a
step: a LARS step moves the head by a share of its norm, so the same number of steps at the same rate is the same
optimisation, where a 16384 batch would leave a 60,000-example split with 3 steps an epoch, far from converged.
The paper reports the best of the sweep; here the sweep is chosen on held-out train shards (the last tenth) and
the winner refit on all of train, so the validation split is never used to choose (every setting of the sweep is trained at once, one head each,
on the same minibatches).

Every process reads the same window of shards and the same minibatches (a function of seed and epoch), and
each device takes its rows of the global batch: the result does not depend on the number of processes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ijepa_jax import sharding
from ijepa_jax.evaluation.shards import Shards

IMAGENET_TRAIN = 1_281_167  # the split the protocol's learning rates are for


def statistics(train: Shards, shard_ids) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) of every feature over the given shards, in float64 sums (one pass)."""
  total, total_sq, n = 0.0, 0.0, 0
  for i in shard_ids:
    x = train.load(i)[0].astype(np.float64)
    total, total_sq, n = total + x.sum(0), total_sq + np.square(x).sum(0), n + len(x)
  mean = total / n
  return mean.astype(np.float32), (np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0)) + 1e-6).astype(np.float32)


def minibatches(train: Shards, shard_ids, batch_size: int, seed: int, epoch: int, window: int):
  """(x, y) global minibatches of one epoch over the given shards: the shards in an order drawn from (seed,
  epoch), `window` of them at a time, their rows shuffled; the last short batch of the epoch dropped."""
  rng = np.random.default_rng([seed, epoch])
  ids = np.asarray(shard_ids)[rng.permutation(len(shard_ids))]
  carry_x, carry_y = None, None
  for start in range(0, len(ids), window):
    parts = [train.load(int(i))[:2] for i in ids[start:start + window]]
    x = np.concatenate(([carry_x] if carry_x is not None else []) + [p[0] for p in parts])
    y = np.concatenate(([carry_y] if carry_y is not None else []) + [p[1] for p in parts])
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    full = len(x) // batch_size * batch_size
    for b in range(0, full, batch_size):
      yield x[b:b + batch_size], y[b:b + batch_size]
    carry_x, carry_y = x[full:], y[full:]


def _put(mesh: Mesh, array: np.ndarray) -> jax.Array:
  """A global array split over the batch axes from the full array every process holds."""
  spec = sharding.batch_sharding(mesh)
  return jax.make_array_from_callback(array.shape, spec, lambda index: array[index])


def train_heads(train: Shards, shard_ids, settings, num_classes: int, mean, std, mesh: Mesh, batch_size: int,
                epochs: int, decay_every: int, seed: int, window: int, reference: int = IMAGENET_TRAIN) -> list[dict]:
  """One linear head per (reference lr, weight decay) in `settings`, trained together on the same minibatches
  with LARS and a step-wise decay; returns their params (numpy)."""
  dp = sharding.data_parallel_size(mesh)
  examples = sum(train.count(int(i)) for i in shard_ids)
  lr_scale = batch_size / 256  # per step, at the protocol's batch (MAE's rule)
  if reference > 0:  # ImageNet's steps per epoch, with a smaller batch on a smaller split
    batch_size = min(batch_size, examples * batch_size // reference)
  batch_size = max(dp, min(batch_size, examples) // dp * dp)
  steps_per_epoch = max(1, examples // batch_size)
  boundaries = {e * steps_per_epoch: 0.1 for e in range(decay_every, epochs, decay_every)}
  width = train.width
  mask = {"w": True, "b": False}  # no weight decay and no trust ratio on the bias
  opts = [optax.lars(optax.piecewise_constant_schedule(lr * lr_scale, boundaries), weight_decay=wd,
                     weight_decay_mask=mask, trust_ratio_mask=mask, momentum=0.9) for lr, wd in settings]
  # MAE's head init (normal, std 0.01): LARS scales each step by the weights' norm, which must not start at 0.
  w0 = 0.01 * jax.random.normal(jax.random.key(seed), (width, num_classes))
  heads = [{"w": w0, "b": jnp.zeros((num_classes,))} for _ in settings]
  replicated = sharding.replicated(mesh)
  heads = jax.device_put(heads, replicated)
  states = jax.device_put([o.init(h) for o, h in zip(opts, heads)], replicated)
  mean, std = jax.device_put((jnp.asarray(mean), jnp.asarray(std)), replicated)

  @jax.jit
  def step(heads, states, x, y):
    x = (x - mean) / std

    def loss(h):
      return optax.softmax_cross_entropy_with_integer_labels(x @ h["w"] + h["b"], y).mean()

    new_heads, new_states = [], []
    for opt, h, s in zip(opts, heads, states):
      grads = jax.grad(loss)(h)
      updates, s = opt.update(grads, s, h)
      new_heads.append(optax.apply_updates(h, updates))
      new_states.append(s)
    return new_heads, new_states

  with jax.set_mesh(mesh):
    for epoch in range(epochs):
      for x, y in minibatches(train, shard_ids, batch_size, seed, epoch, window):
        # One step at a time: thousands of tiny steps queued ahead hung XLA:CPU's all-reduce between 2 devices.
        heads, states = jax.block_until_ready(step(heads, states, _put(mesh, x), _put(mesh, y.astype(np.int32))))
  return [jax.tree.map(np.asarray, h) for h in heads]


def accuracies(data: Shards, shard_ids, heads: list[dict], mean, std) -> np.ndarray:
  """Top-1 of every head over the given shards (streamed)."""
  correct, n = np.zeros(len(heads)), 0
  for i in shard_ids:
    x, y, _ = data.load(int(i))
    x = (x - mean) / std
    correct += [np.sum(np.argmax(x @ h["w"] + h["b"], axis=-1) == y) for h in heads]
    n += len(y)
  return correct / n


def probe(train: Shards, test: Shards, pc, mesh: Mesh, seed: int) -> dict:
  """The sweep on held-out train shards, the winner refit on all train shards, scored on the test shards."""
  if train.num_shards < 2:
    raise ValueError(f"the streamed probe holds out whole shards: {train.examples} examples in one shard of "
                     f"{train.manifest['shard_size']}; lower probe.shard_size")
  all_ids = list(range(train.num_shards))
  held_ids = all_ids[-max(1, round(train.num_shards / 10)):]
  fit_ids = all_ids[:len(all_ids) - len(held_ids)]
  labels = train.labels()[0]
  num_classes = int(max(labels.max(), *(test.load_meta(i)[0].max() for i in range(test.num_shards)))) + 1
  settings = [(float(lr), float(wd)) for lr in pc.sgd_lrs for wd in pc.sgd_weight_decays]
  kw = dict(mesh=mesh, batch_size=int(pc.sgd_batch_size), epochs=int(pc.sgd_epochs),
            decay_every=int(pc.sgd_decay_epochs), seed=seed, window=int(pc.sgd_window),
            reference=int(pc.sgd_reference_examples))
  if pc.standardise:
    mean, std = statistics(train, fit_ids)
  else:
    mean, std = np.zeros(train.width, np.float32), np.ones(train.width, np.float32)
  heads = train_heads(train, fit_ids, settings, num_classes, mean, std, **kw)
  held = accuracies(train, held_ids, heads, mean, std)
  best = int(np.argmax(held))  # of equal scores, the first setting
  if pc.standardise:
    mean, std = statistics(train, all_ids)
  head = train_heads(train, all_ids, [settings[best]], num_classes, mean, std, **kw)
  top1 = float(accuracies(test, range(test.num_shards), head, mean, std)[0])
  return {"top1": top1, "lr": settings[best][0], "weight_decay": settings[best][1], "heldout_top1": float(held[best]),
          "sweep": {f"lr={lr:g},wd={wd:g}": float(a) for (lr, wd), a in zip(settings, held)}}
