"""What a compiled program's HLO text says about itself: the collectives it runs (how many, how many
bytes, over device groups of which sizes) and its while loops (XLA's windowed einsums among them), read
from `compiled.as_text()` of any backend's compile (TPU, GPU, CPU)."""
from __future__ import annotations

import math
import re

_COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "ragged-all-to-all",
                "collective-permute", "collective-broadcast")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
             "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) ([a-z][a-z0-9-]*)\((.*)$")


def _array_bytes(type_text: str) -> int:
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]", type_text):
    size = _ITEMSIZE.get(dtype, 1)  # f8 variants: one byte
    total += size * math.prod(int(x) for x in dims.split(",") if x)
  return int(total)


def _top_level(type_text: str) -> list[str]:
  """The elements of a tuple type '(a, (b, c), d)'; [type_text] for an array type."""
  t = type_text.strip()
  if not t.startswith("("):
    return [t]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(t):
    if ch in "({[":
      depth += 1
    elif ch in ")}]":
      depth -= 1
    elif ch == "," and depth == 1:
      parts.append(t[start:i])
      start = i + 1
  parts.append(t[start:-1])
  return [p for p in (q.strip() for q in parts) if p]


def _group_size(rest: str) -> int | None:
  """How many devices each of the op's groups has, from its replica_groups in any of XLA's forms."""
  # mesh['a'=4,'b'=2][, device_ids=(...)] {'a'}: groups along the named axes of XLA's own device mesh
  m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", rest)
  if m:
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
    return math.prod(sizes[a] for a in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)  # iota form: [groups, size]<=[...]
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", rest)
  if m:
    return len([x for x in m.group(1).split(",") if x])
  return None


def collectives(hlo_text: str) -> dict[str, dict]:
  """The collectives in a compiled HLO module's text: {op: {'count', 'bytes', 'group_sizes'}}, where
  bytes is each op's result per device (for async '-start' ops, the result part), summed over the ops
  as they appear in the program (an op inside a loop body counts once), and group_sizes the sizes of
  the device groups it runs over. Transfers between slices (TPU multislice: send ops to the
  'megascale' DCN runtime) appear as '<kind> across slices (DCN)'."""
  out: dict[str, dict] = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    type_text, op, rest = m.groups()
    if op == "send" and "_xla_megascale_transfer_type" in rest:
      kind = re.search(r'_xla_megascale_transfer_type="([A-Z_]+)"', rest).group(1)
      name, nbytes, size = f"{kind.lower().replace('_', '-')} across slices (DCN)", \
          _array_bytes(_top_level(type_text)[0]), None
    else:
      base = op[:-len("-start")] if op.endswith("-start") else op
      if base not in _COLLECTIVES:
        continue
      parts = _top_level(type_text)
      if op.endswith("-start") and base in ("all-gather", "collective-permute") and len(parts) > 1:
        parts = parts[1:2]   # (operand, result[, context]): the result
      name, nbytes, size = base, sum(_array_bytes(p) for p in parts), _group_size(rest)
    entry = out.setdefault(name, {"count": 0, "bytes": 0, "group_sizes": set()})
    entry["count"] += 1
    entry["bytes"] += nbytes
    if size:
      entry["group_sizes"].add(size)
  for entry in out.values():
    entry["group_sizes"] = sorted(entry["group_sizes"])
  return out


def while_loops(hlo_text: str) -> dict[str, int]:
  """{'all': while loops in a compiled module, 'windowed_einsum': those that are XLA's windowed einsums
  (a matmul looped over the shards of an FSDP weight or gradient as collective-permutes bring them,
  in place of one all-gather or reduce-scatter)}. Cost analysis counts a loop's body once."""
  bodies = re.findall(r" while\(.*?body=%([^ ,]+)", hlo_text)
  return {"all": len(bodies), "windowed_einsum": sum("windowed_dot_general" in b for b in bodies)}
