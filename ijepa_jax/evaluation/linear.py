"""Linear probe: multinomial logistic regression on standardised frozen features, in JAX/optax.

Protocol: the L2 penalty is chosen on a held-out 10% of the train split, then the probe is refit on
the whole train split and scored on the test split. Full-batch L-BFGS: the problem is convex and
small (features of tens of thousands of images), so it converges in a few hundred iterations.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ijepa_jax import data
from ijepa_jax.evaluation import features


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


def probe(train_x, train_y, test_x, test_y, weight_decays, seed: int = 0) -> dict:
  """Standardise with train statistics, choose the penalty on held-out train, refit, score on test."""
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


def run(config, encoder, target_params, mesh, workdir: str) -> dict:
  """The demo's probe: target encoder features vs raw pixels; writes eval.json, prints a table."""
  pc = config.probe
  limit = None if pc.max_train < 0 else int(pc.max_train)
  train_images, train_y = data.load_eval_arrays(config, config.data.split, limit)
  test_images, test_y = data.load_eval_arrays(config, config.data.eval_split)
  d = config.data
  rows = {}
  # The last 4 blocks' pooled outputs, concatenated; the final quarter is the last layer's output.
  feats = [features.extract(encoder, target_params, imgs, d.mean, d.std, pc.batch_size, mesh, layers="last4")
           for imgs in (train_images, test_images)]
  width = feats[0].shape[1] // min(4, encoder.depth)
  rows["I-JEPA target encoder, last layer"] = probe(
      feats[0][:, -width:], train_y, feats[1][:, -width:], test_y, pc.weight_decays, config.seed)
  if encoder.depth >= 4:
    rows["I-JEPA target encoder, last 4 layers"] = probe(
        feats[0], train_y, feats[1], test_y, pc.weight_decays, config.seed)
  if pc.raw_pixels_baseline:  # the same images at raw_pixels_side (28: Fashion-MNIST's own pixels)
    raw = config.copy_and_resolve_references()
    raw.data.image_size = pc.raw_pixels_side
    flat = [data.load_eval_arrays(raw, split, n)[0].reshape(len(y), -1).astype(np.float32) / 255.0
            for split, n, y in ((config.data.split, limit, train_y), (config.data.eval_split, None, test_y))]
    rows["raw pixels"] = probe(flat[0], train_y, flat[1], test_y, pc.weight_decays, config.seed)
  result = {"linear_top1": rows["I-JEPA target encoder, last layer"]["top1"],
            "probe": rows, "train_examples": int(len(train_y)), "test_examples": int(len(test_y))}
  if "raw pixels" in rows:
    result["raw_pixels_top1"] = rows["raw pixels"]["top1"]
  if "I-JEPA target encoder, last 4 layers" in rows:
    result["linear_last4_top1"] = rows["I-JEPA target encoder, last 4 layers"]["top1"]
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(result, f, indent=2)
    print("\nLinear probe (logistic regression, penalty chosen on held-out train):")
    print("| features | test top-1 | weight decay |\n|---|---|---|")
    for name, r in rows.items():
      print(f"| {name} | {100 * r['top1']:.2f}% | {r['weight_decay']:g} |")
  return result
