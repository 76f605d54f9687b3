"""Linear probe: multinomial logistic regression on standardised frozen features, in JAX/optax.

Protocol: the L2 penalty is chosen on a held-out 10% of the train split, then the probe is refit on
the whole train split and scored on the test split. Full-batch L-BFGS: the problem is convex and
small (features of tens of thousands of images), so it converges in a few hundred iterations.
`lowshot` runs the same probe on a class-balanced 1% of the train labels, over several draws.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, weight_decay: float, steps: int = 300):
  """Returns (W, b) minimising mean cross-entropy + weight_decay / 2 * |W|^2."""
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)

  def objective(p):
    logits = x @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(jnp.square(p["w"]))

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  @jax.jit
  def run(p):
    def body(carry, _):
      p, s = carry
      value, grad = value_and_grad(p, state=s)
      updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=objective)
      return (optax.apply_updates(p, updates), s), value
    (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), length=steps)
    return p

  p0 = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  return run(p0)


def accuracy(p, x: np.ndarray, y: np.ndarray) -> float:
  pred = np.asarray(jnp.argmax(jnp.asarray(x) @ p["w"] + p["b"], axis=-1))
  return float(np.mean(pred == y))


def probe(train_x, train_y, test_x, test_y, weight_decays, seed: int = 0, standardise: bool = True) -> dict:
  """Choose the penalty on held-out train, refit, score on test. standardise: each feature to zero mean
  and unit variance with train statistics first (what a BatchNorm without affine before the linear
  layer does at test time, the MAE/I-JEPA probe's 'BatchNorm' option)."""
  if standardise:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  perm = np.random.default_rng(seed).permutation(len(train_x))
  held, fit_idx = perm[: len(perm) // 10], perm[len(perm) // 10:]
  scores = {wd: accuracy(fit(train_x[fit_idx], train_y[fit_idx], num_classes, wd), train_x[held], train_y[held])
            for wd in weight_decays}
  best = max(scores, key=scores.get)
  p = fit(train_x, train_y, num_classes, best)
  return {"top1": accuracy(p, test_x, test_y), "weight_decay": best, "heldout_top1": scores[best]}


def lowshot(train_x, train_y, test_x, test_y, weight_decays, fraction: float = 0.01, seeds=(0, 1, 2),
            standardise: bool = True) -> dict:
  """The probe on `fraction` of the train labels (the same share of every class), once per seed:
  mean and standard deviation of test top-1 over the draws."""
  draws = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(train_y == c), max(1, round(fraction * np.sum(train_y == c))),
                                     replace=False) for c in np.unique(train_y)])
    draws.append(probe(train_x[idx], train_y[idx], test_x, test_y, weight_decays, seed, standardise)["top1"])
  return {"top1": float(np.mean(draws)), "std": float(np.std(draws)), "draws": draws,
          "examples": int(len(idx))}
