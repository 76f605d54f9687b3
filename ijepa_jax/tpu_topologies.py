"""Cloud TPU slice names as users type them (v5p-128, v5litepod-16, v6e-256, v4-64) -> the TPU
compiler's topology (jax.experimental.topologies) and each chip's HBM.

v4 and v5p names count TensorCores: a chip has two, fused into one device ("megacore"), so v5p-128 is
64 chips = 64 devices in a 3-D torus. v5e (v5litepod) and v6e names count chips, one core and one
device each, in a 2-D torus. Shapes follow Cloud TPU's slice catalogue: the small v4 / v5p slices
2x2x1 ... 2x4x4, then multiples of a 4x4x4 cube, as close to a cube as the chip count allows.
"""
from __future__ import annotations

import dataclasses
import itertools
import re

GIB = 2 ** 30

# generation -> (topology prefix, megacore, HBM per chip, the largest slice in chips). HBM: what the
# runtime lets a program allocate, as Cloud TPU's pages state it (v5p: 96 GiB physical, 95 usable).
GENERATIONS = {
    "v4": ("v4", True, 32 * GIB, 4096),
    "v5p": ("v5", True, 95 * GIB, 8960),
    "v5e": ("v5e", False, 16 * GIB, 256),
    "v6e": ("v6e", False, 32 * GIB, 256),
}
# Peak dense bf16 FLOP/s per chip, as Cloud TPU's pages state them: the denominator of an MFU.
PEAK_BF16_FLOPS = {"v4": 275e12, "v5p": 459e12, "v5e": 197e12, "v6e": 918e12}
_ALIASES = {"v5litepod": "v5e"}
_SMALL_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}

VALID_FORMS = ("v4-N and v5p-N (N TensorCores = N/2 chips: 8, 16, 32, 64, then multiples of 128; "
               "v4 up to 8192, v5p up to 17920), v5litepod-N or v5e-N and v6e-N (N chips: "
               f"{', '.join(map(str, _SHAPES_2D))})")


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                    # the accelerator type as Cloud TPU spells it: v5p-128, v5litepod-16
  generation: str              # v4, v5p, v5e, v6e
  chips: int                   # = devices (megacore chips are one device)
  shape: tuple[int, ...]       # chips along each torus axis
  megacore: bool
  hbm_bytes: int               # per chip = per device

  @property
  def hosts(self) -> int:
    """TPU VM hosts (one JAX process each): 4 chips a host, except the single-host v5e / v6e slices of up
    to 8 chips."""
    if not self.megacore and self.chips <= 8:
      return 1
    return max(1, self.chips // 4)

  @property
  def topology_name(self) -> str:
    return f"{GENERATIONS[self.generation][0]}:{'x'.join(map(str, self.shape))}"

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    """Torus wrap-around links: v4 / v5p slices of whole 4x4x4 cubes; v5e / v6e axes of 16 chips."""
    if len(self.shape) == 3:
      return (self.chips >= 64,) * 3
    return (self.shape[0] == 16, self.shape[1] == 16, False)

  def topology_kwargs(self, num_slices: int = 1) -> dict:
    """Arguments of jax.experimental.topologies.get_topology_desc for `num_slices` such slices."""
    return dict(topology_name=self.topology_name, platform="tpu",
                chip_config_name="megacore" if self.megacore else "default",
                chips_per_host_bounds=(1, 1, 1) if self.chips == 1 else (2, 2, 1),
                num_slices=num_slices, wrap=self.wrap)

  def doubled(self) -> Slice | None:
    """The slice of the same generation with twice the chips, if there is one."""
    n = 2 * self.chips * (2 if self.megacore else 1)
    prefix = "v5litepod" if self.generation == "v5e" else self.generation
    try:
      return parse(f"{prefix}-{n}")
    except ValueError:
      return None


def _cube_multiple_shape(chips: int) -> tuple[int, int, int]:
  """chips = 64 k: the a <= b <= c with a b c = k closest to a cube (smallest largest side, then the
  smallest surface), times 4: 64 -> 4x4x4, 320 -> 4x4x20, 576 -> 4x12x12, 4608 -> 12x16x24."""
  k = chips // 64
  best = min((max(t), sum(t), tuple(sorted(t)))
             for a, b in itertools.product(range(1, k + 1), repeat=2) if k % (a * b) == 0
             for t in [(a, b, k // (a * b))])
  return tuple(4 * s for s in best[2])


def parse(name: str) -> Slice:
  """A Slice for a name such as v5p-128; ValueError naming the valid forms for anything else."""
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name.strip().lower())
  error = ValueError(f"--topology={name!r} is not a Cloud TPU slice this report knows; valid forms: {VALID_FORMS}. "
                     f"Example: --topology=v5p-128")
  if not m:
    raise error
  generation = _ALIASES.get(m.group(1), m.group(1))
  n = int(m.group(2))
  _, megacore, hbm, max_chips = GENERATIONS[generation]
  if megacore:
    chips = n // 2
    if n % 2 or not (chips in _SMALL_3D or (chips % 64 == 0 and 0 < chips <= max_chips)):
      raise error
    shape = _SMALL_3D.get(chips) or _cube_multiple_shape(chips)
  else:
    chips = n
    if chips not in _SHAPES_2D:
      raise error
    shape = _SHAPES_2D[chips]
  canonical = f"{'v5litepod' if generation == 'v5e' else generation}-{n}"
  return Slice(canonical, generation, chips, shape, megacore, hbm)
