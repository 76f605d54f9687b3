"""The two parameter layouts of the transformer blocks, and the exact maps between them.

model.scan_layers=False (the release's, and every checkpoint written before scan_layers existed):
  {..., 'blocks_0': {'attn': ..., 'mlp': ..., 'norm1': ..., 'norm2': ...}, 'blocks_1': ..., ...}
model.scan_layers=True (vit.run_blocks under nn.scan):
  {..., 'blocks': {the same tree, every leaf with a leading axis of size depth}}

The maps act on every dict in any pytree (a param tree, {'encoder', 'predictor'}, the EMA target, optax
states whose mu / nu mirror the params, a whole TrainState), so one call converts a checkpoint's state.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# The logical name of the stacked blocks' leading axis (vit.run_blocks' nn.scan metadata); the axis rules
# map it to no mesh axis and sharding.fit never moves another dimension's mesh axes onto it: the scan slices it.
STACKED_AXIS = "layers"

_BLOCK = re.compile(r"blocks_(\d+)")


def _stack(*xs):
  # numpy in, numpy out: the converter builds numpy trees and places them on the mesh afterwards.
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)


def _on_dicts(tree, fn):
  """fn applied to each outermost dict of a pytree (the pytree's other nodes are kept as they are)."""
  if isinstance(tree, Mapping):
    return fn(tree)
  is_dict = lambda x: isinstance(x, Mapping)   # noqa: E731
  leaves, treedef = jax.tree.flatten(tree, is_leaf=is_dict)
  return treedef.unflatten([fn(x) if is_dict(x) else x for x in leaves])


def _stack_dict(d: Mapping) -> dict:
  d = {k: _stack_dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}
  found = sorted(int(m.group(1)) for k in d if (m := _BLOCK.fullmatch(k)))
  if not found:
    return d
  if found != list(range(len(found))) or "blocks" in d:
    raise ValueError(f"stack_blocks: expected blocks_0..blocks_{len(found) - 1} and no 'blocks', got "
                     f"{sorted(k for k in d if k == 'blocks' or _BLOCK.fullmatch(k))}")
  layers = [d.pop(f"blocks_{i}") for i in found]
  d["blocks"] = jax.tree.map(_stack, *layers)
  return d


def _unstack_dict(d: Mapping) -> dict:
  d = {k: _unstack_dict(v) if isinstance(v, Mapping) and k != "blocks" else v for k, v in d.items()}
  blocks = d.get("blocks")
  if not isinstance(blocks, Mapping):
    return d
  depths = {np.shape(x)[0] for x in jax.tree.leaves(blocks)}
  if len(depths) != 1:
    raise ValueError(f"unstack_blocks: the leaves under 'blocks' have leading axes {sorted(depths)}, not one depth")
  del d["blocks"]
  for i in range(depths.pop()):
    d[f"blocks_{i}"] = jax.tree.map(lambda x: x[i], blocks)
  return d


def stack_blocks(tree):
  """Unrolled layout (blocks_{i}) -> scanned layout ('blocks' with a leading layer axis), exactly."""
  return _on_dicts(tree, _stack_dict)


def unstack_blocks(tree):
  """Scanned layout ('blocks' with a leading layer axis) -> unrolled layout (blocks_{i}), exactly."""
  return _on_dicts(tree, _unstack_dict)
