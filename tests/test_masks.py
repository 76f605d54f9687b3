"""Multi-block mask sampler: static counts, disjointness, determinism, block geometry, errors."""
import numpy as np
import pytest

from ijepa_jax.errors import ConfigError
from ijepa_jax.masks import MultiBlockSampler


def _sample(sampler, seed=0, batch=64):
  return sampler(np.random.default_rng(seed), batch)


@pytest.mark.parametrize("mode", ["release", "uniform"])
def test_static_counts_and_ranges(mode):
  s = MultiBlockSampler(grid=16, mode=mode).resolved()
  for seed in range(5):
    out = _sample(s, seed)
    assert out["context_idx"].shape == (64, s.num_context) and out["context_idx"].dtype == np.int32
    assert out["target_idx"].shape == (64, 4, s.num_target) and out["target_idx"].dtype == np.int32
    assert out["context_idx"].min() >= 0 and out["context_idx"].max() < 256
    # indices are distinct and in raster order within every list
    assert np.all(np.diff(out["context_idx"], axis=-1) > 0)
    assert np.all(np.diff(out["target_idx"], axis=-1) > 0)


def test_release_counts_match_the_release():
  # ViT-H/14 at 224 px: 16x16 grid; target blocks 35..54 tokens, so 35 kept per block; the release's
  # mean truncated context length at per-device batch 128 is ~70 (REFERENCE.md).
  s = MultiBlockSampler(grid=16).resolved()
  assert s.num_target == 35
  assert 60 <= s.num_context <= 75


@pytest.mark.parametrize("mode", ["release", "uniform"])
def test_context_and_targets_are_disjoint(mode):
  s = MultiBlockSampler(grid=14, mode=mode).resolved()
  out = _sample(s, 1, batch=128)
  for ctx, tgt in zip(out["context_idx"], out["target_idx"]):
    assert not set(ctx.tolist()) & set(tgt.ravel().tolist())


def test_deterministic_from_the_generator():
  s = MultiBlockSampler(grid=16).resolved()
  a, b, c = _sample(s, 7), _sample(s, 7), _sample(s, 8)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["target_idx"], c["target_idx"])


def _bbox(idx, grid):
  r, c = np.divmod(idx, grid)
  return r.min(), r.max(), c.min(), c.max()


def test_targets_are_rectangles_of_the_drawn_size():
  s = MultiBlockSampler(grid=16).resolved()
  sizes = s._sizes(s.target_scale, s.target_aspect)
  out = _sample(s, 3, batch=32)
  for blocks in out["target_idx"]:
    for idx in blocks:
      r0, r1, c0, c1 = _bbox(idx, 16)
      h, w = r1 - r0 + 1, c1 - c0 + 1
      assert any(h <= bh and w <= bw for bh, bw in sizes)  # a subset of one allowed rectangle
  # one block size per batch: all bounding boxes in a batch fit the same rectangle
  hs = {(_bbox(i, 16)[1] - _bbox(i, 16)[0]) for b in out["target_idx"] for i in b}
  assert max(hs) - min(hs) <= 9


def test_release_never_covers_last_row_and_column_uniform_does():
  def coverage(mode):
    s = MultiBlockSampler(grid=8, mode=mode, min_keep=4).resolved()
    targets, context = np.zeros(64), np.zeros(64)
    rng = np.random.default_rng(0)
    for _ in range(100):
      out = s(rng, 32)
      np.add.at(targets, out["target_idx"].ravel(), 1)
      np.add.at(context, out["context_idx"].ravel(), 1)
    return targets.reshape(8, 8), context.reshape(8, 8)
  for rel in coverage("release"):
    assert rel[-1].sum() == 0 and rel[:, -1].sum() == 0
  for uni in coverage("uniform"):
    assert uni[-1].sum() > 0 and uni[:, -1].sum() > 0


def test_mean_target_block_size_matches_analytic():
  s = MultiBlockSampler(grid=16, mode="uniform").resolved()
  rng = np.random.default_rng(0)
  areas = []
  for _ in range(300):
    t_size, _ = s._draw_sizes(rng)
    areas.append(t_size[0] * t_size[1])
  grid_u = np.linspace(0, 1, 20001)
  analytic = np.mean([np.prod(s._block_size(u, s.target_scale, s.target_aspect)) for u in grid_u])
  assert abs(np.mean(areas) - analytic) < 0.05 * analytic


def _release_block(u, grid, scale=(0.15, 0.2), aspect=(0.75, 1.5)):
  """The release's _sample_block_size (REFERENCE.md), written out independently of ijepa_jax.masks
  (the clamp to grid - 1 never binds for these scales on a 16x16 grid, so both modes share it)."""
  max_keep = int(grid * grid * (scale[0] + u * (scale[1] - scale[0])))
  ar = aspect[0] + u * (aspect[1] - aspect[0])
  h, w = int(round(np.sqrt(max_keep * ar))), int(round(np.sqrt(max_keep / ar)))
  return min(h, grid - 1), min(w, grid - 1)


@pytest.mark.parametrize("mode", ["release", "uniform"])
def test_sampled_block_extents_match_analytic(mode):
  # One block size per batch: many small batches. The bounding box of the kept tokens is the block's
  # extent (a larger block keeps 35 of its tokens: losing a whole edge row or column is ~0.1% likely).
  s = MultiBlockSampler(grid=16, mode=mode).resolved()
  rng = np.random.default_rng(0)
  hs, ws = [], []
  for _ in range(400):
    r, c = np.divmod(s(rng, 2)["target_idx"], 16)
    hs.append(np.ptp(r, -1).max() + 1)
    ws.append(np.ptp(c, -1).max() + 1)
  analytic = np.array([_release_block(u, 16) for u in np.linspace(0, 1, 20001)], float)
  hs, ws = np.array(hs, float), np.array(ws, float)
  assert abs(hs.mean() - analytic[:, 0].mean()) < 0.03 * analytic[:, 0].mean()
  assert abs(ws.mean() - analytic[:, 1].mean()) < 0.03 * analytic[:, 1].mean()
  area = np.prod(analytic, 1).mean()
  assert abs((hs * ws).mean() - area) < 0.03 * area


def test_impossible_settings_are_clear_errors_not_hangs():
  with pytest.raises(ConfigError, match="min_keep"):
    MultiBlockSampler(grid=7).resolved()          # the release's settings on a 7x7 grid
  with pytest.raises(ConfigError, match="min_keep"):
    MultiBlockSampler(grid=8).resolved()
  with pytest.raises(ConfigError, match="num_context"):
    MultiBlockSampler(grid=16, num_context=250).resolved()
  with pytest.raises(ConfigError, match="mode"):
    MultiBlockSampler(grid=16, mode="random").resolved()
  with pytest.raises(ConfigError, match="num_targets|target_scale"):
    MultiBlockSampler(grid=8, min_keep=4, num_targets=16, target_scale=(0.7, 0.8)).resolved()


def test_small_grid_demo_settings_are_meaningful():
  s = MultiBlockSampler(grid=7, mode="uniform", min_keep=4).resolved()
  out = _sample(s, 0, batch=128)
  assert s.num_context >= 10 and s.num_target >= 5
  assert out["context_idx"].shape[1] == s.num_context


# ============================================================================ counts='release': the release's collator, padded
def _release_counts(grid=16, shard=32, **kw):
  return MultiBlockSampler(grid=grid, counts="release", shard_size=shard, **kw).resolved()


def test_release_counts_pad_to_the_largest_block_and_context():
  s = _release_counts()
  # ViT-H/14's 16x16 grid: target blocks of 35..54 tokens, contexts up to the 15x15 block
  assert (s.num_target, s.num_context, s.max_context) == (54, 225, 225)
  assert s.example_shapes() == {"context_idx": (225,), "target_idx": (4, 54), "context_count": (), "target_count": (),
                                "context_cut": ()}
  for seed in range(3):
    out = _sample(s, seed, batch=96)
    assert {k: v.shape for k, v in out.items()} == {"context_idx": (96, 225), "context_count": (96,),
                                                   "target_idx": (96, 4, 54), "target_count": (96,),
                                                   "context_cut": (96,)}
    assert not out["context_cut"].any()   # padded to the longest context: nothing is ever cut
    assert all(v.dtype == np.int32 for v in out.values())


def test_release_counts_are_per_shard_whole_blocks_and_the_shortest_context():
  s = _release_counts(shard=32)
  g, batch = 16, 128
  out = _sample(s, 5, batch=batch)
  sizes = set()
  for start in range(0, batch, 32):
    rows = slice(start, start + 32)
    kt, kc = out["target_count"][rows], out["context_count"][rows]
    assert len(set(kt)) == 1 and len(set(kc)) == 1          # one target size and one context length a shard
    kt, kc = int(kt[0]), int(kc[0])
    sizes.add((kt, kc))
    assert 35 <= kt <= 54 and kc > s.min_keep
    shortest = []
    for i in range(start, start + 32):
      blocks = out["target_idx"][i, :, :kt]
      for b in blocks:     # every token of a whole h x w rectangle, raster order
        r, c = np.divmod(b, g)
        h, w = r.max() - r.min() + 1, c.max() - c.min() + 1
        assert h * w == kt and len(set(b.tolist())) == kt and np.all(np.diff(b) > 0)
      assert not out["target_idx"][i, :, kt:].any() and not out["context_idx"][i, kc:].any()   # padding: 0
      ctx = out["context_idx"][i, :kc]
      assert np.all(np.diff(ctx) > 0)
      # the release removes all 4 targets unless 20 tries failed: then the last ones are let back in
      overlap = [bool(set(ctx.tolist()) & set(b.tolist())) for b in blocks]
      assert overlap == sorted(overlap)
      shortest.append(not any(overlap))
    assert sum(shortest) >= 28
  assert len(sizes) > 1                                      # shards draw their own sizes


def test_release_counts_keep_the_raster_prefix_of_the_shortest_context():
  # A small grid where contexts often fall to a few tokens (and the fallback lets targets back in)
  s = _release_counts(grid=8, shard=4, min_keep=4, target_scale=(0.1, 0.15), num_targets=2)
  lengths = set()
  for seed in range(30):
    available, targets = s._release_shard(np.random.default_rng(seed), 4)
    out = s(np.random.default_rng(seed), 4)     # the same draws, truncated and padded
    counts = available.sum(-1)
    kc = int(counts.min())
    assert (out["context_count"] == kc).all() and kc > s.min_keep
    lengths.add(kc)
    for i in range(4):
      assert out["context_idx"][i, :kc].tolist() == np.flatnonzero(available[i])[:kc].tolist()
      assert (out["target_idx"][i, :, :targets.shape[-1]] == targets[i]).all()
  assert len(lengths) > 3


def test_release_counts_deterministic_and_shard_size_checked():
  s = _release_counts(shard=8)
  a, b = _sample(s, 3, batch=16), _sample(s, 3, batch=16)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  with pytest.raises(ValueError, match="does not split into shards of 8"):
    _sample(s, 0, batch=12)


def test_release_counts_cap_and_errors():
  s, exact = _release_counts(num_context=80), _release_counts()
  out, full = _sample(s, 0, batch=256), _sample(exact, 0, batch=256)   # the same draws
  assert s.num_context == 80 and out["context_idx"].shape[1] == 80 and out["context_count"].max() <= 80
  np.testing.assert_array_equal(out["context_count"] + out["context_cut"], full["context_count"])
  assert out["context_cut"].any() and (out["context_cut"][out["context_count"] < 80] == 0).all()
  np.testing.assert_array_equal(out["context_idx"], full["context_idx"][:, :80])
  assert _release_counts(num_context=300).num_context == 225   # above the longest: no cap, never cut
  with pytest.raises(ConfigError, match="must be above mask.min_keep"):
    _release_counts(num_context=10)
  with pytest.raises(ConfigError, match="mask.counts='exact' is not one of"):
    MultiBlockSampler(grid=16, counts="exact").resolved()
