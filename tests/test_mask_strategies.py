"""The ablation's masking strategies draw the masks the paper defines, at static shapes, from the generator."""
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from ijepa_jax.errors import ConfigError
from ijepa_jax.mask_strategies import STRATEGIES, make_sampler
from ijepa_jax.masks import MultiBlockSampler


def _sampler(strategy, grid, **mask):
  c = tiny_config(**{"mask.strategy": strategy, **{f"mask.{k}": v for k, v in mask.items()}})
  return make_sampler(c.mask, grid)


def _sets(row):
  return [set(map(int, r)) for r in row]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("grid", [7, 8, 16])
def test_static_shapes_deterministic_and_in_range(strategy, grid):
  s = _sampler(strategy, grid)
  assert s.counts in ("fixed", "release") and s.grid == grid
  shapes = s.example_shapes()
  rng = np.random.default_rng(0)
  draws = [s(rng, 16) for _ in range(5)]
  for d in draws:
    assert {k: v.shape[1:] for k, v in d.items()} == shapes
    assert all(v.dtype == np.int32 for v in d.values())
    assert d["context_idx"].min() >= 0 and d["context_idx"].max() < grid * grid
    assert d["target_idx"].shape[1] == s.num_targets
    for ctx, tgt in zip(d["context_idx"], d["target_idx"]):
      assert len(set(ctx.tolist())) == len(ctx)   # no token twice
      if strategy != "multiblock":                # multi-block blocks may overlap each other (the release's)
        assert not set(ctx.tolist()) & set(tgt.ravel().tolist())
  assert not all(np.array_equal(draws[0]["target_idx"], d["target_idx"]) for d in draws[1:])
  again = s(np.random.default_rng(0), 16)
  for k in again:
    np.testing.assert_array_equal(again[k], draws[0][k])


def test_multiblock_is_the_default_and_the_same_sampler():
  c = tiny_config()
  assert c.mask.strategy == "multiblock"
  grid = c.data.image_size // c.model.patch_size
  assert make_sampler(c.mask, grid) == MultiBlockSampler.from_config(c.mask, grid)
  old = ml_collections.ConfigDict(c.mask.to_dict())
  del old["strategy"]   # a config written before the switch
  assert make_sampler(old, grid) == MultiBlockSampler.from_config(c.mask, grid)


@pytest.mark.parametrize("grid", [8, 16])
def test_rasterized_even_grid_is_exactly_the_quadrants(grid):
  s = _sampler("rasterized", grid)
  assert (s.num_targets, s.num_target, s.num_context) == (3, (grid // 2) ** 2, (grid // 2) ** 2)
  half = grid // 2
  quads = [{r * grid + c for r in range(grid) for c in range(grid) if (r < half) == top and (c < half) == lft}
           for top in (True, False) for lft in (True, False)]
  d = s(np.random.default_rng(1), 64)
  seen = set()
  for ctx, tgt in zip(d["context_idx"], d["target_idx"]):
    ctx, tgt = set(ctx.tolist()), _sets(tgt)
    assert ctx in quads and all(t in quads for t in tgt)
    assert set().union(ctx, *tgt) == set(range(grid * grid))   # disjoint quadrants covering the grid
    seen.add(quads.index(ctx))
  assert seen == {0, 1, 2, 3}   # the context quadrant is drawn per image


def test_rasterized_odd_grid_keeps_subsets_of_the_quadrants():
  s = _sampler("rasterized", 7)
  assert s.num_context == s.num_target == 9
  d = s(np.random.default_rng(2), 32)
  for ctx, tgt in zip(d["context_idx"], d["target_idx"]):
    rows = [{i // 7 < 3 for i in b} for b in [ctx, *tgt]]
    cols = [{i % 7 < 3 for i in b} for b in [ctx, *tgt]]
    assert all(len(r) == 1 and len(c) == 1 for r, c in zip(rows, cols))   # each block within one quadrant
    assert len({(r.pop(), c.pop()) for r, c in zip(rows, cols)}) == 4      # the four different quadrants


def _bbox(tokens, grid):
  r, c = np.divmod(np.asarray(sorted(tokens)), grid)
  return r.min(), r.max(), c.min(), c.max()


def test_block_is_one_rectangle_and_the_context_its_complement():
  grid = 16
  s = _sampler("block", grid, block_aspect=(1.0, 1.0))   # one size: the exact definition
  side = int(round(np.sqrt(int(grid * grid * 0.6))))
  assert (s.num_targets, s.num_target, s.num_context) == (1, side * side, grid * grid - side * side)
  d = s(np.random.default_rng(3), 32)
  for ctx, tgt in zip(d["context_idx"], d["target_idx"]):
    t = set(tgt[0].tolist())
    r0, r1, c0, c1 = _bbox(t, grid)
    assert (r1 - r0 + 1, c1 - c0 + 1) == (side, side)
    assert set(ctx.tolist()) == set(range(grid * grid)) - t


def test_block_with_an_aspect_range_keeps_subsets_inside_one_drawn_rectangle():
  grid = 16
  s = _sampler("block", grid)
  areas = set()
  for seed in range(20):
    d = s(np.random.default_rng(seed), 8)
    for ctx, tgt in zip(d["context_idx"], d["target_idx"]):
      t = set(tgt[0].tolist())
      r0, r1, c0, c1 = _bbox(t, grid)
      area = (r1 - r0 + 1) * (c1 - c0 + 1)
      assert s.num_target <= area <= grid * grid - s.num_context
      areas.add(area)
      box = {r * grid + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}
      assert not set(ctx.tolist()) & box          # the context lies in the rectangle's complement
  assert len(areas) > 1                           # the aspect ratio varies between batches
  assert 0.5 < s.num_target / grid ** 2 and (grid ** 2 - s.num_context) / grid ** 2 < 0.7


def test_random_target_and_context_are_disjoint_and_cover_the_grid():
  grid = 16
  s = _sampler("random", grid)
  assert (s.num_targets, s.num_target, s.num_context) == (1, int(grid * grid * 0.6), grid * grid - int(grid * grid * 0.6))
  d = s(np.random.default_rng(4), 32)
  for ctx, tgt in zip(d["context_idx"], d["target_idx"]):
    assert set(ctx.tolist()) | set(tgt[0].tolist()) == set(range(grid * grid))
    assert (np.diff(ctx) > 0).all() and (np.diff(tgt[0]) > 0).all()   # raster order
  assert len({tuple(t[0]) for t in d["target_idx"]}) == 32


def test_unknown_strategy_and_bad_scales_are_config_errors():
  with pytest.raises(ConfigError, match="multiblock.*rasterized.*block.*random"):
    _sampler("quadrants", 8)
  with pytest.raises(ConfigError, match="block_scale"):
    _sampler("block", 8, block_scale=1.0)
  with pytest.raises(ConfigError, match="random_ratio"):
    _sampler("random", 8, random_ratio=1.0)
