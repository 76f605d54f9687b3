"""Multi-block mask sampler: which patches the context encoder sees and which the predictor predicts.

Runs on the host (numpy), one call per batch, deterministic from the generator it is given (the
data pipeline seeds it from (seed, batch index)). Vectorised over the batch: no per-image Python.

What the release does (REFERENCE.md, "Multi-block mask sampler") and what we keep:
  * one target-block size and one context-block size per batch, drawn from one uniform number that
    moves scale and aspect ratio together; h = round(sqrt(max_keep * ar)), w = round(sqrt(max_keep / ar))
    with max_keep = int(N * scale);
  * 4 target rectangles per image (they may overlap each other), one context block minus all targets;
  * `mode='release'`: sizes clamped below the grid side and block corners drawn from
    U{0 .. H-h-1} (the release's off-by-one: the last patch row and column are never in a block);
    `mode='uniform'`: corners from U{0 .. H-h}, sizes up to the full side, so every patch can be covered.

Static shapes (so a run compiles once). The release truncates every context list in a batch to the
shortest one, and all its target lists in a batch have one length, so its shapes change every batch.
Two ways to keep one shape (`mask.counts`):

`counts='release'`: the release's collator itself, on groups of `shard_size` images (mask.reference_batch:
the release's per-GPU batch, 128 for ViT-H, so the masks are the release run's whatever our mesh and
never depend on the device count), padded: every token of every target block (padded to the largest
block the config can draw), the context redrawn only as the release redraws it and truncated to the
group's shortest in raster order, padded to `num_context` (-1: the longest context the sampler can
give, so nothing is ever cut; a smaller cap saves compute and cuts only groups whose shortest context
is longer, counted per image in `context_cut`). The real lengths travel as `context_count` /
`target_count`; the encoder and the predictor never attend to padding, and the loss is each image's
mean over its real elements, averaged, i.e. the mean of the groups' means, as DDP averages (step.py).

`counts='fixed'` (the layout before the release-exact mode; smaller shapes): every batch has exactly
  * `num_target` tokens per target block: the smallest block area the configured scale/aspect range can
    produce; a larger block keeps a random subset of its tokens (the block's extent is unchanged);
  * `num_context` tokens of context: by default the release's *mean* truncated length, i.e. the mean
    over batches of the shortest context in a batch of `reference_batch` images (128 per device in the
    release), estimated once by simulation. `mode='release'` keeps the raster-order prefix of the
    available context (what truncation does), `mode='uniform'` a random subset.
An image with fewer available context tokens than `num_context` redraws its block positions; after
`_MAX_REDRAWS` redraws the remaining images drop target exclusions one at a time, as the release does
after repeated failures. Settings that cannot work on the grid are a ConfigError at construction time,
never a hang.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from ijepa_jax import defaults
from ijepa_jax.errors import ConfigError

MODES = ("release", "uniform")
COUNTS = ("fixed", "release")
_MAX_REDRAWS = 64
_RELEASE_TIMEOUT = 20  # the release's context-block tries per number of target exclusions
_SIM_BATCHES = 1024  # batches simulated to choose the default context length (~0.3 s at 16x16)


@dataclasses.dataclass(frozen=True)
class MultiBlockSampler:
  """Samples (context_idx [B, num_context], target_idx [B, num_targets, num_target]) int32 arrays."""

  grid: int
  num_targets: int = 4
  target_scale: tuple[float, float] = (0.15, 0.2)
  target_aspect: tuple[float, float] = (0.75, 1.5)
  context_scale: tuple[float, float] = (0.85, 1.0)
  context_aspect: tuple[float, float] = (1.0, 1.0)
  min_keep: int = 10
  mode: str = "release"
  num_context: int = -1
  reference_batch: int = 128
  counts: str = "fixed"
  shard_size: int = 0   # counts='release': images per release per-GPU batch (0: one call = one batch)

  # ------------------------------------------------------------------ construction and checks
  @classmethod
  def from_config(cls, mask_cfg, grid: int) -> "MultiBlockSampler":
    sampler = cls(
        grid=grid,
        num_targets=int(mask_cfg.num_targets),
        target_scale=tuple(float(v) for v in mask_cfg.target_scale),
        target_aspect=tuple(float(v) for v in mask_cfg.target_aspect),
        context_scale=tuple(float(v) for v in mask_cfg.context_scale),
        context_aspect=tuple(float(v) for v in mask_cfg.context_aspect),
        min_keep=int(mask_cfg.min_keep),
        mode=str(mask_cfg.mode),
        num_context=int(defaults.get(mask_cfg, "mask.num_context")),
        reference_batch=int(defaults.get(mask_cfg, "mask.reference_batch")),
        counts=str(defaults.get(mask_cfg, "mask.counts")),
        shard_size=int(defaults.get(mask_cfg, "mask.reference_batch")),
    )
    return sampler.resolved()

  def resolved(self) -> "MultiBlockSampler":
    """Validates the settings against the grid and fills in `num_context`."""
    g = self.grid
    if self.mode not in MODES:
      raise ConfigError(f"mask.mode={self.mode!r} is not one of {MODES}: set --config.mask.mode=release or uniform.")
    if self.counts not in COUNTS:
      raise ConfigError(f"mask.counts={self.counts!r} is not one of {COUNTS}: set --config.mask.counts=release "
                        "(the release's token counts, padded) or fixed.")
    for name in ("target_scale", "target_aspect", "context_scale", "context_aspect"):
      lo, hi = getattr(self, name)
      if not 0 < lo <= hi:
        raise ConfigError(f"mask.{name}={(lo, hi)} must be an increasing pair of positive numbers.")
    if self.target_scale[1] > 1 or self.context_scale[1] > 1:
      raise ConfigError("mask.target_scale and mask.context_scale are fractions of the patch grid: keep them <= 1.")
    if self.num_targets < 1:
      raise ConfigError(f"mask.num_targets={self.num_targets} must be >= 1.")
    if g < 2:
      raise ConfigError(f"a {g}x{g} patch grid is too small for block masking: lower model.patch_size or raise data.image_size.")
    fix = ("lower --config.mask.min_keep, raise the block scales, or use a finer patch grid "
           "(smaller model.patch_size or larger data.image_size)")
    t_min = min(h * w for h, w in self._sizes(self.target_scale, self.target_aspect))
    if t_min <= self.min_keep:
      raise ConfigError(
          f"target blocks on the {g}x{g} patch grid can be as small as {t_min} tokens, not more than "
          f"mask.min_keep={self.min_keep} (the release's sampler would loop forever here): {fix}.")
    c_min = min(h * w for h, w in self._sizes(self.context_scale, self.context_aspect))
    if self.counts == "release" and c_min <= self.min_keep:
      raise ConfigError(
          f"context blocks on the {g}x{g} patch grid can be as small as {c_min} tokens, not more than "
          f"mask.min_keep={self.min_keep} (the release's sampler would loop forever here): {fix}.")
    mean_shortest, valid_fraction = self._simulate_release()
    if self.counts == "release":
      if valid_fraction < 0.05:
        raise ConfigError(
            f"on the {g}x{g} patch grid the context keeps more than mask.min_keep={self.min_keep} tokens in only "
            f"{100 * valid_fraction:.0f}% of images once {self.num_targets} target blocks of scale "
            f"{self.target_scale} are removed: lower --config.mask.num_targets or --config.mask.target_scale, "
            f"or {fix}.")
      # A cap at or above the longest context the grid allows cuts nothing: it is that length (so a
      # paper config's cap stays harmless when its image size or patch is overridden).
      longest = self.max_context
      if 0 < self.num_context <= self.min_keep:
        raise ConfigError(f"mask.num_context={self.num_context} must be above mask.min_keep={self.min_keep}.")
      return dataclasses.replace(self, num_context=int(min(self.num_context, longest) if self.num_context > 0
                                                       else longest))
    num_context = self.num_context if self.num_context > 0 else mean_shortest
    if num_context <= self.min_keep or valid_fraction < 0.05:
      raise ConfigError(
          f"on the {g}x{g} patch grid the context keeps more than mask.min_keep={self.min_keep} tokens in only "
          f"{100 * valid_fraction:.0f}% of images once {self.num_targets} target blocks of scale "
          f"{self.target_scale} are removed (and ~{num_context} tokens in a batch's shortest): "
          f"lower --config.mask.num_targets or --config.mask.target_scale, or {fix}.")
    if num_context > c_min:
      raise ConfigError(
          f"mask.num_context={num_context} is larger than the smallest context block ({c_min} tokens on the "
          f"{g}x{g} grid): lower --config.mask.num_context or raise --config.mask.context_scale.")
    if num_context < self.min_keep:
      raise ConfigError(f"mask.num_context={num_context} is below mask.min_keep={self.min_keep}.")
    return dataclasses.replace(self, num_context=int(num_context))

  @functools.cached_property  # computed once: it scans 2001 draws, far more than sampling a batch costs
  def num_target(self) -> int:
    """Tokens per target block: counts='fixed': the smallest area the scale/aspect range can produce;
    counts='release': the largest (every block padded to it)."""
    areas = [h * w for h, w in self._sizes(self.target_scale, self.target_aspect)]
    return max(areas) if self.counts == "release" else min(areas)

  @functools.cached_property
  def max_context(self) -> int:
    """The longest context the release's sampler can give: the largest context block (all target
    exclusions dropped by its fallback)."""
    return max(h * w for h, w in self._sizes(self.context_scale, self.context_aspect))

  @property
  def group_size(self) -> int:
    """Images that share one draw of block sizes (the data pipeline draws each group of a global batch
    from its own generator): the release's per-GPU batch for counts='release', 0 (the whole batch) else."""
    return self.shard_size if self.counts == "release" else 0

  def example_shapes(self) -> dict[str, tuple[int, ...]]:
    """Per-image shapes of the int32 arrays __call__ returns."""
    shapes = {"context_idx": (self.num_context,), "target_idx": (self.num_targets, self.num_target)}
    if self.counts == "release":
      shapes.update(context_count=(), target_count=(), context_cut=())
    return shapes

  def _sizes(self, scale, aspect, n=2001):
    """All (h, w) one uniform draw can produce (the function is piecewise constant in the draw)."""
    return sorted(set(self._block_size(u, scale, aspect) for u in np.linspace(0.0, 1.0, n)))

  def _block_size(self, u: float, scale, aspect) -> tuple[int, int]:
    g = self.grid
    s = scale[0] + u * (scale[1] - scale[0])
    ar = aspect[0] + u * (aspect[1] - aspect[0])
    max_keep = int(g * g * s)
    h = int(round(math.sqrt(max_keep * ar)))
    w = int(round(math.sqrt(max_keep / ar)))
    top = g - 1 if self.mode == "release" else g  # the release clamps blocks strictly below the side
    return max(1, min(h, top)), max(1, min(w, top))

  def _simulate_release(self) -> tuple[int, float]:
    """(mean over batches of the shortest valid context in a batch of `reference_batch` images,
    fraction of images whose context keeps more than min_keep tokens at the first draw)."""
    rng = np.random.default_rng(0)
    mins, valid_fraction = [], []
    for _ in range(_SIM_BATCHES):
      t_size, c_size = self._draw_sizes(rng)
      targets = self._blocks(rng, (self.reference_batch, self.num_targets), t_size)
      context = self._blocks(rng, (self.reference_batch,), c_size)
      counts = (context & ~targets.any(axis=1)).reshape(self.reference_batch, -1).sum(-1)
      valid = counts[counts > self.min_keep]  # the release redraws images at or below min_keep
      mins.append(valid.min() if valid.size else 0)
      valid_fraction.append(valid.size / counts.size)
    return int(np.round(np.mean(mins))), float(np.mean(valid_fraction))

  # ------------------------------------------------------------------ sampling
  def _draw_sizes(self, rng):
    t_size = self._block_size(rng.random(), self.target_scale, self.target_aspect)
    c_size = self._block_size(rng.random(), self.context_scale, self.context_aspect)
    return t_size, c_size

  def _corners(self, rng, shape, size) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of blocks of `size`; the release draws them from U{0..g-h-1}."""
    g, (h, w) = self.grid, size
    span = 0 if self.mode == "release" else 1
    return (rng.integers(0, max(g - h + span, 1), size=shape),
            rng.integers(0, max(g - w + span, 1), size=shape))

  def _rects(self, top, left, size) -> np.ndarray:
    """Boolean masks [*top.shape, g, g] of the rectangles."""
    ar, (h, w) = np.arange(self.grid), size
    rows = (ar >= top[..., None]) & (ar < top[..., None] + h)
    cols = (ar >= left[..., None]) & (ar < left[..., None] + w)
    return rows[..., :, None] & cols[..., None, :]

  def _blocks(self, rng, shape, size) -> np.ndarray:
    return self._rects(*self._corners(rng, shape, size), size)

  def __call__(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    if self.counts == "release":
      return self._release_counts(rng, batch_size)
    n, m = self.grid * self.grid, self.num_targets
    t_size, c_size = self._draw_sizes(rng)
    t_top, t_left = self._corners(rng, (batch_size, m), t_size)
    targets = self._rects(t_top, t_left, t_size)
    context = self._blocks(rng, (batch_size,), c_size)
    need = self.num_context
    available = context & ~targets.any(axis=1)
    short = available.reshape(batch_size, n).sum(-1) < need
    for _ in range(_MAX_REDRAWS):
      if not short.any():
        break
      rows = np.flatnonzero(short)
      t_top[rows], t_left[rows] = self._corners(rng, (rows.size, m), t_size)
      targets[rows] = self._rects(t_top[rows], t_left[rows], t_size)
      context[rows] = self._blocks(rng, (rows.size,), c_size)
      available[rows] = context[rows] & ~targets[rows].any(axis=1)
      short = available.reshape(batch_size, n).sum(-1) < need
    for keep in range(m - 1, -1, -1):  # the release's fallback: fewer exclusions
      if not short.any():
        break
      rows = np.flatnonzero(short)
      available[rows] = context[rows] & ~targets[rows, :keep].any(axis=1)
      short = available.reshape(batch_size, n).sum(-1) < need

    target_idx = self._target_indices(rng, t_top, t_left, t_size)
    available = available.reshape(batch_size, n)
    context_idx = _first(available, need) if self.mode == "release" else _pick(available, need, rng)
    return {"context_idx": context_idx, "target_idx": target_idx}

  # ------------------------------------------------------------------ counts='release'
  def _release_counts(self, rng, batch_size: int) -> dict[str, np.ndarray]:
    """The release's collator, one data-parallel shard (its per-GPU batch) at a time, padded.

    Per shard: one target size and one context size; per image, 4 target blocks (kept whole), then the
    context block redrawn until more than min_keep tokens remain once the targets are removed, with one
    target exclusion fewer after every 20 failures (the release's timeout); every context truncated to
    the shard's shortest, in raster order. Returned padded to static shapes with the real lengths:
    context_idx [B, num_context] (+ context_count [B]), target_idx [B, M, num_target] (+ target_count [B]);
    padding repeats index 0 and is masked in attention and in the loss (step.py). context_cut [B]: the
    tokens the num_context cap took from each image's truncated context (0 unless capped).
    """
    s = self.shard_size or batch_size
    if batch_size % s:
      raise ValueError(f"a batch of {batch_size} images does not split into shards of {s}")
    g, n, m = self.grid, self.grid * self.grid, self.num_targets
    out = {"context_idx": np.zeros((batch_size, self.num_context), np.int32),
           "context_count": np.zeros((batch_size,), np.int32),
           "target_idx": np.zeros((batch_size, m, self.num_target), np.int32),
           "target_count": np.zeros((batch_size,), np.int32),
           "context_cut": np.zeros((batch_size,), np.int32)}
    for start in range(0, batch_size, s):
      rows = slice(start, start + s)
      available, target_idx = self._release_shard(rng, s)
      shortest = int(available.sum(-1).min())
      k = min(shortest, self.num_context)   # num_context caps it
      out["context_idx"][rows, :k] = _first(available, k)
      out["context_count"][rows] = k
      out["context_cut"][rows] = shortest - k
      out["target_idx"][rows, :, :target_idx.shape[-1]] = target_idx
      out["target_count"][rows] = target_idx.shape[-1]
    return out

  def _release_shard(self, rng, s: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard of the release's collator before truncation: (each image's context tokens [s, N] bool,
    its target blocks' indices [s, M, h*w] in raster order)."""
    g, n, m = self.grid, self.grid * self.grid, self.num_targets
    t_size, c_size = self._draw_sizes(rng)
    t_top, t_left = self._corners(rng, (s, m), t_size)
    targets = self._rects(t_top, t_left, t_size)             # [s, M, g, g]
    fails = np.zeros((s,), np.int64)
    context = np.zeros((s, g, g), bool)
    todo = np.arange(s)
    while todo.size:   # each image's own tries, as the release's per-image loop
      context[todo] = self._blocks(rng, (todo.size,), c_size)
      excluded = np.arange(m) < (m - fails[todo] // _RELEASE_TIMEOUT)[:, None]   # [k, M]
      covered = (targets[todo] & excluded[:, :, None, None]).any(axis=1)
      ok = (context[todo] & ~covered).reshape(todo.size, n).sum(-1) > self.min_keep
      context[todo] &= ~covered
      fails[todo[~ok]] += 1
      todo = todo[~ok]
    (h, w) = t_size
    offsets = (np.arange(h)[:, None] * g + np.arange(w)[None, :]).ravel()
    return context.reshape(s, n), ((t_top * g + t_left)[..., None] + offsets).astype(np.int32)

  def _target_indices(self, rng, top, left, size) -> np.ndarray:
    """[B, M, num_target] raster-order token indices of each rectangle (a random subset if larger)."""
    g, (h, w), k = self.grid, size, self.num_target
    offsets = (np.arange(h)[:, None] * g + np.arange(w)[None, :]).ravel()
    idx = (top * g + left)[..., None] + offsets  # raster order within each rectangle
    if h * w > k:
      keep = np.argpartition(rng.random(idx.shape, dtype=np.float32), k - 1, axis=-1)[..., :k]
      idx = np.take_along_axis(idx, np.sort(keep, axis=-1), axis=-1)
    return idx.astype(np.int32)


def real_tokens(masks: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Each image's context indices [Kc_i] and target blocks [M, Kt_i] without padding (counts='release'
  batches carry context_count / target_count; 'fixed' ones are all real)."""
  ctx, tgt = masks["context_idx"], masks["target_idx"]
  kc = masks.get("context_count", np.full(len(ctx), ctx.shape[1]))
  kt = masks.get("target_count", np.full(len(tgt), tgt.shape[2]))
  return [c[:k] for c, k in zip(ctx, kc)], [t[:, :k] for t, k in zip(tgt, kt)]


def _first(mask: np.ndarray, k: int) -> np.ndarray:
  """Raster-order indices of the first k True entries of each row of mask [..., n] (each has >= k)."""
  keep = mask & (np.cumsum(mask, axis=-1) <= k)
  return np.nonzero(keep)[-1].reshape(*mask.shape[:-1], k).astype(np.int32)


def _pick(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """k indices of True entries of each row, uniformly at random, returned in raster order."""
  keys = np.where(mask, rng.random(mask.shape, dtype=np.float32), 2.0)
  idx = np.argpartition(keys, k - 1, axis=-1)[..., :k]
  return np.sort(idx, axis=-1).astype(np.int32)
