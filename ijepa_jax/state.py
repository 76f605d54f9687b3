"""The train state's layout: its step-0 initializer, its abstract (sharded) shape on a mesh, and the
encoder's step-0 parameters (the random-init baseline).

It sits below both the trainer (ijepa_jax.train initialises or resumes the state) and the loaders
(ijepa_jax.loading restores the state, or one encoder of it, for evaluation and notebooks), so that
neither has to import the other.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ijepa_jax import sharding
from ijepa_jax.models import make_models
from ijepa_jax.step import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def models(config):
  """(encoder, predictor) of the config: the encoder module serves as the context and the target encoder.
  With config.target='pixels' the predictor projects to a patch's pixels (patch_size^2 x channels)."""
  d = config.data
  pixels = config.target == "pixels"
  out = config.model.patch_size ** 2 * d.channels if pixels else None
  return make_models(config.model, d.image_size, d.channels, DTYPES[config.dtype], predictor_out=out)


def init_keys(rng):
  """(encoder key, predictor key): one derivation for a run's init and its random-init baseline."""
  return jax.random.split(rng)


def make_init(config, encoder: nn.Module, predictor: nn.Module, tx, sampler):
  """init_state(rng) -> the TrainState at step 0, its leaves boxed with their logical axis names."""
  d = config.data

  def init_state(rng):
    k_enc, k_pred = init_keys(rng)
    images = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)
    ctx_idx = jnp.zeros((1, sampler.num_context), jnp.int32)
    tgt_idx = jnp.zeros((1, sampler.num_targets, sampler.num_target), jnp.int32)
    enc = encoder.init(k_enc, images, ctx_idx)["params"]
    context = jnp.zeros((1, sampler.num_context, encoder.width), jnp.float32)
    pred = predictor.init(k_pred, context, ctx_idx, tgt_idx)["params"]
    params = {"encoder": enc, "predictor": pred}
    return TrainState(step=jnp.zeros([], jnp.int32), params=params, target=params["encoder"],
                      opt_state=tx.init(params))

  return init_state


def abstract(boxed, mesh, rules):
  """(abstract tree of jax.ShapeDtypeStruct with shardings, the shardings) for a tree of boxed shapes
  (jax.eval_shape of an init): nothing is allocated."""
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  tree = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), shardings)
  return tree, shardings


def abstract_encoder(config, encoder: nn.Module, mesh):
  """The encoder's parameters as jax.ShapeDtypeStruct with their shardings on `mesh`: the shape of the
  target encoder and of the context encoder alike (what a partial restore of either reads into)."""
  d = config.data
  images = jax.ShapeDtypeStruct((1, d.image_size, d.image_size, d.channels), jnp.float32)
  boxed = jax.eval_shape(encoder.init, jax.random.key(0), images)["params"]
  return abstract(boxed, mesh, sharding.rules(config))[0]


def initial_encoder_params(config, encoder: nn.Module):
  """The encoder's parameters at step 0 of a run with this config (the random-init baseline)."""
  k_enc, _ = init_keys(jax.random.key(config.seed))
  d = config.data
  images = jnp.zeros((1, d.image_size, d.image_size, d.channels), jnp.float32)
  return nn.unbox(jax.jit(encoder.init)(k_enc, images)["params"])
