"""Linear probe: multinomial logistic regression on standardised frozen features, in JAX/optax.

Protocol: the L2 penalty is chosen on a held-out 10% of the train split, then the probe is refit on
the whole train split and scored on the test split. Full-batch L-BFGS: the problem is convex and
small (features of tens of thousands of images). The penalties are swept as a regularisation path,
strongest first, each fit starting from the previous one's solution, in whitened coordinates
(`fit_path`), so every fit on the path reaches its minimum in tens of iterations.
`lowshot` runs the same probe on a class-balanced 1% of the train labels, over several draws.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def second_moments(x: np.ndarray, max_rows: int = 20000) -> tuple[np.ndarray, np.ndarray]:
  """Eigenvalues and eigenvectors of the features' second-moment matrix x^T x / n (from at most max_rows
  rows: it only conditions the problem, any estimate will do)."""
  if len(x) > max_rows:
    x = x[np.random.default_rng(0).choice(len(x), max_rows, replace=False)]
  x = np.asarray(x, np.float64)
  evals, evecs = np.linalg.eigh(x.T @ x / len(x))
  return np.maximum(evals, 0.0), evecs


def fit_path(x: np.ndarray, y: np.ndarray, num_classes: int, weight_decays, steps: int = 50) -> dict:
  """{penalty: {'w', 'b'}}: minimisers of mean cross-entropy + penalty / 2 * |W|^2 for each penalty,
  strongest first, each fit warm-started from the previous one's solution (`steps` L-BFGS iterations
  each; one compilation for all fits of these shapes).

  Each fit optimises V with W = P V, P = (C + max(penalty, 1e-3) I)^(-1/2), C the features' second
  moments: P is invertible, so the objective and its minimiser are those of W, but the Hessian in V is
  close to the identity whatever the features' correlations and the penalty (the 1e-3 floor keeps the
  directions the features hardly use from being stretched by the weak penalties). Without it L-BFGS
  crawls: on the demo's 512 pooled features plain L-BFGS was still ~1 point of test top-1 short after
  300 iterations at penalty 1e-4, and the weak penalties these features need were out of its reach.
  """
  evals, evecs = second_moments(x)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  w, b = jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,))
  path = {}
  for wd in sorted(weight_decays, reverse=True):
    scale = evals + max(wd, 1e-3)
    precond = ((evecs / np.sqrt(scale)) @ evecs.T).astype(np.float32)
    precond_inv = ((evecs * np.sqrt(scale)) @ evecs.T).astype(np.float32)
    w, b = _solve(x, y, w, b, jnp.float32(wd), precond, precond_inv, steps)
    path[wd] = {"w": w, "b": b}
  return path


@functools.partial(jax.jit, static_argnames="steps")
def _solve(x, y, w, b, weight_decay, precond, precond_inv, steps: int):
  """`steps` L-BFGS iterations on V = precond^-1 W from (w, b); returns (W, b). A module-level jit, so
  every fit of the same shapes (the draws of `lowshot`, the trained and random-init encoders) shares
  one compilation."""
  opt = optax.lbfgs()

  def objective(p):
    w = precond @ p["v"]
    ce = optax.softmax_cross_entropy_with_integer_labels(x @ w + p["b"], y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(jnp.square(w))

  value_and_grad = optax.value_and_grad_from_state(objective)

  def body(carry, _):
    p, s = carry
    value, grad = value_and_grad(p, state=s)
    updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=objective)
    return (optax.apply_updates(p, updates), s), None

  p = {"v": precond_inv @ w, "b": b}
  p = jax.lax.scan(body, (p, opt.init(p)), length=steps)[0][0]
  return precond @ p["v"], p["b"]


def accuracy(p, x: np.ndarray, y: np.ndarray) -> float:
  pred = np.asarray(jnp.argmax(jnp.asarray(x) @ p["w"] + p["b"], axis=-1))
  return float(np.mean(pred == y))


def fit(train_x, train_y, weight_decays, seed: int = 0, standardise: bool = True,
        num_classes: int | None = None) -> dict:
  """The probe fit on (train_x, train_y): penalty chosen on a held-out 10%, then refit on all of it. Returns
  {'w', 'b', 'mu', 'sd', 'weight_decay', 'heldout_top1'} (mu/sd: the standardisation, identity if off).
  standardise: each feature to zero mean and unit variance with train statistics first (what a BatchNorm
  without affine before the linear layer does at test time, the MAE/I-JEPA probe's 'BatchNorm' option)."""
  if standardise:
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
  else:
    mu, sd = np.zeros(train_x.shape[1], np.float32), np.ones(train_x.shape[1], np.float32)
  train_x = (train_x - mu) / sd
  num_classes = int(train_y.max()) + 1 if num_classes is None else num_classes
  perm = np.random.default_rng(seed).permutation(len(train_x))
  held, fit_idx = perm[: len(perm) // 10], perm[len(perm) // 10:]
  path = fit_path(train_x[fit_idx], train_y[fit_idx], num_classes, weight_decays)
  scores = {wd: accuracy(p, train_x[held], train_y[held]) for wd, p in path.items()}
  best = max(scores, key=scores.get)  # of equal scores, the strongest penalty
  # The refit follows the same path on all of train, down to the chosen penalty.
  p = fit_path(train_x, train_y, num_classes, [wd for wd in weight_decays if wd >= best])[best]
  return {**p, "mu": mu, "sd": sd, "weight_decay": best, "heldout_top1": scores[best]}


def predict(model: dict, x: np.ndarray) -> np.ndarray:
  return np.asarray(jnp.argmax(jnp.asarray((x - model["mu"]) / model["sd"]) @ model["w"] + model["b"], axis=-1))


def probe(train_x, train_y, test_x, test_y, weight_decays, seed: int = 0, standardise: bool = True) -> dict:
  """Choose the penalty on held-out train, refit, score on test (see `fit`)."""
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  model = fit(train_x, train_y, weight_decays, seed, standardise, num_classes)
  return {"top1": float(np.mean(predict(model, test_x) == test_y)), "weight_decay": model["weight_decay"],
          "heldout_top1": model["heldout_top1"]}


def balanced_draw(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Positions of `fraction` of each class's examples (at least one), drawn with `seed`."""
  rng = np.random.default_rng(seed)
  return np.concatenate([rng.choice(np.flatnonzero(labels == c), max(1, round(fraction * np.sum(labels == c))),
                                    replace=False) for c in np.unique(labels)])


def lowshot(train_x, train_y, test_x, test_y, weight_decays, fraction: float = 0.01, seeds=(0, 1, 2),
            standardise: bool = True) -> dict:
  """The probe on `fraction` of the train labels (the same share of every class), once per seed:
  mean and standard deviation of test top-1 over the draws."""
  draws = []
  for seed in seeds:
    idx = balanced_draw(train_y, fraction, seed)
    draws.append(probe(train_x[idx], train_y[idx], test_x, test_y, weight_decays, seed, standardise)["top1"])
  return {"top1": float(np.mean(draws)), "std": float(np.std(draws)), "draws": draws,
          "examples": int(len(idx))}
