"""Schedules at chosen steps (the release's conventions), decay mask, and AdamW = torch's AdamW."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ijepa_jax import optim
from ijepa_jax.defaults import base_config

T, W = 1000, 100


def test_lr_warmup_then_cosine():
  c = base_config().optim
  lr = optim.lr_schedule(c, T, W)
  # the release calls scheduler.step() before each update: step i uses counter i + 1
  assert np.isclose(lr(0), 2e-4 + 1 / W * (1e-3 - 2e-4))
  assert np.isclose(lr(49), 2e-4 + 50 / W * (1e-3 - 2e-4))
  assert np.isclose(lr(W - 1), 1e-3)                     # counter == warmup: cosine at progress 0
  mid = W - 1 + (T - W) // 2
  assert np.isclose(lr(mid), 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.5)), rtol=1e-5)
  assert np.isclose(lr(T - 1), 1e-6, atol=1e-9)


def test_weight_decay_cosine_rises_from_004_to_04():
  c = base_config().optim
  wd = optim.wd_schedule(c, T)
  assert np.isclose(wd(0), 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi / T)), rtol=1e-6)
  assert np.isclose(wd(T // 2 - 1), 0.22, rtol=1e-5)
  assert np.isclose(wd(T - 1), 0.4)
  c.wd_schedule = "linear"
  assert np.isclose(optim.wd_schedule(c, T)(T // 2 - 1), 0.22, rtol=1e-5)


def test_ema_momentum_linear_from_0996_to_1():
  m = optim.momentum_schedule(base_config().optim, T)
  assert np.isclose(m(0), 0.996)
  assert np.isclose(m(500), 0.998)
  assert np.isclose(m(T), 1.0)


def test_decay_mask_excludes_biases_and_norms_only():
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "norm": {"scale": jnp.ones(4)},
            "mask_token": jnp.ones((1, 1, 4)), "conv": {"kernel": jnp.ones((2, 2, 1, 4))}}
  mask = optim.decay_mask(params)
  assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False},
                  "mask_token": True, "conv": {"kernel": True}}


def test_adamw_matches_torch_formula():
  """One step by hand: p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), decay only on matrices."""
  c = base_config().optim
  tx = optim.make_optimizer(c)
  p = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5])}
  g = {"w": jnp.array([[0.1, 0.3]]), "b": jnp.array([-0.2])}
  updates, _ = tx.update(g, optim.at_step(tx.init(p), optim.make_schedules(c, T, W), 0), p)
  new = optax.apply_updates(p, updates)
  lr, wd = optim.lr_schedule(c, T, W)(0), optim.wd_schedule(c, T)(0)
  adam = lambda x: (x * 0.1 / 0.1) / (np.sqrt(x * x * 0.001 / 0.001) + 1e-8)  # bias-corrected first step
  np.testing.assert_allclose(new["w"], p["w"] - lr * (adam(g["w"]) + wd * p["w"]), rtol=1e-6)
  np.testing.assert_allclose(new["b"], p["b"] - lr * adam(g["b"]), rtol=1e-6)


def test_optimizer_equals_the_chain_it_replaced_step_for_step():
  """optax.adamw with lr and weight decay set from the step count = the former optimizer (Adam, masked
  scheduled weight decay, scheduled lr, the schedules read from optax's counters), through warmup and decay."""
  c = base_config().optim
  c.start_lr, c.lr, c.final_lr = 0.01, 0.1, 0.001
  total, warmup = 12, 4
  s = optim.make_schedules(c, total, warmup)
  former = optax.chain(optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps),
                       optax.add_decayed_weights(s.weight_decay, mask=optim.decay_mask),
                       optax.scale_by_learning_rate(s.lr))
  tx = optim.make_optimizer(c)
  rng = np.random.default_rng(0)
  p = q = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
  state_p, state_q = former.init(p), tx.init(q)
  for step in range(total):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
    u, state_p = former.update(g, state_p, p)
    v, state_q = tx.update(g, optim.at_step(state_q, s, step), q)
    p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    jax.tree.map(np.testing.assert_array_equal, p, q)   # bit for bit
