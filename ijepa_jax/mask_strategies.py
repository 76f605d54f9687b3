"""The masking strategies of the paper's ablation (Table 6), next to the multi-block sampler.

`make_sampler(mask_cfg, grid)` is what the library builds a sampler with: `mask.strategy`
  multiblock  masks.MultiBlockSampler (the default; 4 target blocks, one context block minus them)
  rasterized  the grid cut into four quadrants: one quadrant (drawn per image) the context, the other
              three the M=3 target blocks (each predicted as its own sequence, as multi-block's blocks)
  block       one target block of scale mask.block_scale (0.6) and aspect ratio in mask.block_aspect
              (0.75, 1.5); the context is its complement
  random      a random mask.random_ratio (0.6) of the patches the target (one "block", M=1); the context
              is the complement

The scales are Table 6's of arXiv 2301.08243 ("Ablating masking strategy", ViT-B/16, 300 epochs,
1% IN-1k linear): targets Quadrant x3 / context the complement (avg ratio 0.25), 15.5%; Block(0.6) x1 /
complement (avg ratio 0.4), 20.2%; Random(0.6) x1 / complement (avg ratio 0.4), 17.6%; multi-block
54.2%. The web search in this session returned no copy of the table's text (only summaries of the
paper), so these scales are from our reading of the paper, not re-checked against it here. The paper
gives no aspect ratio for 'block': we use the multi-block targets' (0.75, 1.5), drawn per batch.

Static shapes, as masks.py's counts='fixed': every call returns exactly `num_context` context tokens and
`num_targets` x `num_target` target tokens.
  * random: exact (the target is int(N * ratio) patches, the context the other N - that).
  * rasterized on an even grid: exact (each quadrant (g/2)^2). On an odd grid (the demo's 7x7) the
    quadrants are floor/ceil halves of different sizes; every quadrant then keeps a random subset of
    the smallest quadrant's size (9 of 9-16 tokens on 7x7), as counts='fixed' does for target blocks.
  * block: one block size per batch (one uniform draw moving scale and aspect, as masks.py); the target
    keeps a random subset of the smallest area the aspect range can give, the context a random subset
    of the smallest complement. With mask.block_aspect=(1, 1) both are exact.
Deterministic from the generator passed in (the pipeline seeds it from (seed, batch index)).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from ijepa_jax import defaults
from ijepa_jax.errors import ConfigError
from ijepa_jax.masks import MultiBlockSampler, _pick

STRATEGIES = ("multiblock", "rasterized", "block", "random")


def make_sampler(mask_cfg, grid: int):
  """The sampler `mask.strategy` names (missing: multiblock, as in configs written before the switch)."""
  strategy = str(defaults.get(mask_cfg, "mask.strategy"))
  if strategy == "multiblock":
    return MultiBlockSampler.from_config(mask_cfg, grid)
  if strategy not in STRATEGIES:
    raise ConfigError(f"mask.strategy={strategy!r} is not one of {STRATEGIES}: set --config.mask.strategy="
                      "multiblock (the paper's), rasterized, block or random (its ablation, Table 6).")
  if grid < 2:
    raise ConfigError(f"a {grid}x{grid} patch grid is too small for mask.strategy={strategy}.")
  if strategy == "rasterized":
    return RasterizedSampler(grid)
  if strategy == "block":
    scale = float(defaults.get(mask_cfg, "mask.block_scale"))
    return BlockSampler(grid, (scale, scale),
                        tuple(float(v) for v in defaults.get(mask_cfg, "mask.block_aspect"))).checked()
  return RandomSampler(grid, float(defaults.get(mask_cfg, "mask.random_ratio"))).checked()


@dataclasses.dataclass(frozen=True)
class _Fixed:
  """The interface the pipeline reads from a sampler (see masks.MultiBlockSampler)."""
  grid: int

  shard_size: int = dataclasses.field(default=0, kw_only=True)   # read only with counts='release'
  counts = "fixed"

  def example_shapes(self) -> dict[str, tuple[int, ...]]:
    return {"context_idx": (self.num_context,), "target_idx": (self.num_targets, self.num_target)}


@dataclasses.dataclass(frozen=True)
class RasterizedSampler(_Fixed):
  """Quadrants: one (uniform per image) the context, the other three the target blocks, in raster order."""
  num_targets = 3

  @functools.cached_property
  def _quadrants(self) -> np.ndarray:
    """[4, g*g] bool: top-left, top-right, bottom-left, bottom-right (the top/left halves are floor(g/2))."""
    g, half = self.grid, self.grid // 2
    rows, cols = np.divmod(np.arange(g * g), g)
    return np.stack([(rows < half) & (cols < half), (rows < half) & (cols >= half),
                     (rows >= half) & (cols < half), (rows >= half) & (cols >= half)])

  @property
  def num_context(self) -> int:
    return int(self._quadrants.sum(-1).min())

  @property
  def num_target(self) -> int:
    return self.num_context

  def __call__(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    which = rng.integers(0, 4, size=batch_size)                               # the context quadrant
    order = np.argsort(np.arange(4)[None, :] == which[:, None], axis=1, kind="stable")   # targets first
    quads = self._quadrants[order]                                            # [B, 4, N]
    k = self.num_context
    return {"context_idx": _pick(quads[:, 3], k, rng), "target_idx": _pick(quads[:, :3], k, rng)}


@dataclasses.dataclass(frozen=True)
class BlockSampler(_Fixed):
  """One target rectangle per image (one size per batch), the context its complement."""
  scale: tuple[float, float] = (0.6, 0.6)
  aspect: tuple[float, float] = (0.75, 1.5)
  num_targets = 1

  def checked(self) -> "BlockSampler":
    for name in ("scale", "aspect"):
      lo, hi = getattr(self, name)
      if not 0 < lo <= hi:
        raise ConfigError(f"mask.block_{name}={(lo, hi)} must be positive (an increasing pair for the aspect).")
    if self.scale[1] >= 1:
      raise ConfigError(f"mask.block_scale={self.scale} must stay below 1: the context is the block's complement.")
    if self.num_context < 1:
      raise ConfigError(f"mask.block_scale={self.scale} leaves no context on the {self.grid}x{self.grid} grid.")
    return self

  def _size(self, u: float) -> tuple[int, int]:
    """As masks.py: one uniform draw sets scale and aspect; h, w clamped to the grid (and the block never
    the whole grid)."""
    g = self.grid
    s = self.scale[0] + u * (self.scale[1] - self.scale[0])
    ar = self.aspect[0] + u * (self.aspect[1] - self.aspect[0])
    keep = int(g * g * s)
    h = max(1, min(int(round(math.sqrt(keep * ar))), g))
    w = max(1, min(int(round(math.sqrt(keep / ar))), g if h < g else g - 1))
    return h, w

  @functools.cached_property
  def _areas(self) -> list[int]:
    return [h * w for h, w in set(self._size(u) for u in np.linspace(0.0, 1.0, 2001))]

  @property
  def num_target(self) -> int:
    return min(self._areas)

  @property
  def num_context(self) -> int:
    return self.grid * self.grid - max(self._areas)

  def __call__(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    g = self.grid
    h, w = self._size(rng.random())
    top = rng.integers(0, g - h + 1, size=batch_size)
    left = rng.integers(0, g - w + 1, size=batch_size)
    ar = np.arange(g)
    rows = (ar >= top[:, None]) & (ar < top[:, None] + h)
    cols = (ar >= left[:, None]) & (ar < left[:, None] + w)
    block = (rows[:, :, None] & cols[:, None, :]).reshape(batch_size, g * g)
    return {"context_idx": _pick(~block, self.num_context, rng),
            "target_idx": _pick(block, self.num_target, rng)[:, None]}


@dataclasses.dataclass(frozen=True)
class RandomSampler(_Fixed):
  """A uniformly random `ratio` of the patches the target (M=1), the rest the context."""
  ratio: float = 0.6
  num_targets = 1

  def checked(self) -> "RandomSampler":
    if not (0 < self.num_target < self.grid * self.grid):
      raise ConfigError(f"mask.random_ratio={self.ratio} must leave at least one target and one context patch "
                        f"on the {self.grid}x{self.grid} grid.")
    return self

  @property
  def num_target(self) -> int:
    return int(self.grid * self.grid * self.ratio)

  @property
  def num_context(self) -> int:
    return self.grid * self.grid - self.num_target

  def __call__(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    n, k = self.grid * self.grid, self.num_target
    order = np.argsort(rng.random((batch_size, n), dtype=np.float32), axis=-1)
    return {"context_idx": np.sort(order[:, k:], axis=-1).astype(np.int32),
            "target_idx": np.sort(order[:, :k], axis=-1).astype(np.int32)[:, None]}
