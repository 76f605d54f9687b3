"""Import the release's PyTorch checkpoints (or a Hugging Face IJepaModel) as a resumable workdir.

  python -m ijepa_jax.convert --torch=IN1K-vit.h.14-300e.pth.tar --config=configs/vit_h14.py --out=DIR
  python -m ijepa_jax.convert --hf=DIR_OR_model.safetensors --config=configs/vit_h14.py --out=DIR
  python -m ijepa_jax.convert --workdir=RUN --config=configs/vit_h14.py --out=DIR

The third form rewrites a workdir's latest checkpoint in the block layout the config asks for
(model.scan_layers, see ijepa_jax/models/layout.py; the paper configs' default is the scanned layout, so
the command above moves a run started unrolled onto it), keeping its step, optimizer state and EMA target.
The names are always mapped to the unrolled layout (blocks_{i}) and stacked at the end when the config
has model.scan_layers=True.

Writes DIR/checkpoints/0 (params, EMA target, a fresh optimizer state, step 0, an empty data state) and
DIR/config.json, so `loading.load_encoder(DIR)` gives the encoder for evaluation and
`python -m ijepa_jax.main --config=... --workdir=DIR` continues training from the imported weights.

Layout facts used (all checked, nothing silently dropped): torch Linear weights are [out, in] (Flax
Dense kernels are [in, out]); conv weights are [D, C, p, p] (Flax: [p, p, C, D]); the release's qkv
rows are q|k|v then head-major, which is exactly the order our Dense(3D) output is reshaped in, so
qkv is a plain transpose (Hugging Face splits it into q/k/v Linears: concatenated in that order).
Positional embeddings are fixed sin-cos constants here, not parameters: the checkpoint's copy is only
compared with ours, which catches a wrong patch or image size in the config.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from ijepa_jax.errors import ConfigError, flags_parser

POS_ATOL = 1e-6
# Hugging Face IJepaModel tensors that are no part of the I-JEPA encoder (only present with
# add_pooling_layer / use_mask_token): reported, not imported.
HF_IGNORED = re.compile(r"^(pooler\.|embeddings\.mask_token$)")


# ============================================================================ reading
def _torch():
  try:
    import torch
  except ImportError:
    raise ConfigError("reading PyTorch checkpoints needs torch: pip install torch "
                      "(or pip install -e '.[parity]')") from None
  return torch


def _numpy(tensor) -> np.ndarray:
  """torch tensor -> float32 numpy (bf16/fp16 checkpoints are widened: our params are float32)."""
  return tensor.detach().float().cpu().numpy()


def _strip_module(state_dict: dict, what: str) -> dict[str, np.ndarray]:
  """Drops the DistributedDataParallel 'module.' prefix (keys without it are accepted as they are)."""
  if not isinstance(state_dict, dict):
    raise ConfigError(f"checkpoint entry {what!r} is a {type(state_dict).__name__}, not a state dict")
  out = {}
  for key, value in state_dict.items():
    out[key[len("module."):] if key.startswith("module.") else key] = _numpy(value)
  return out


@contextlib.contextmanager
def _local_file(path: str):
  """A local path torch or safetensors can open: the file itself, or a temporary copy of a gs:// object."""
  from ijepa_jax import storage
  if not storage.is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, storage.path(path).name)
    with storage.path(path).open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, 64 * 2 ** 20)
    yield local


def read_release(path: str) -> dict[str, dict[str, np.ndarray]]:
  """The release's *.pth.tar (local or gs://) -> {'encoder', 'predictor', 'target_encoder'} of numpy state dicts."""
  from ijepa_jax import storage
  torch = _torch()
  if not storage.check_readable(path, "--torch").is_file():
    raise ConfigError(f"--torch={path}: no such file")
  with _local_file(path) as local:
    try:
      # mmap keeps a multi-GB ViT-H checkpoint (optimizer moments included) out of RAM until read.
      ckpt = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
      ckpt = torch.load(local, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
      raise ConfigError(f"{path} holds a {type(ckpt).__name__}, not the release's checkpoint dict")
    missing = [k for k in ("encoder", "predictor", "target_encoder") if k not in ckpt]
    if missing:
      raise ConfigError(f"{path} has no {missing} entries (found {sorted(ckpt)}): not a release I-JEPA "
                        "checkpoint; for a Hugging Face IJepaModel use --hf")
    return {k: _strip_module(ckpt[k], k) for k in ("encoder", "predictor", "target_encoder")}


def read_hf(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """A Hugging Face IJepaModel (model.safetensors, or a directory with one; local or gs://) ->
  (state dict, config.json)."""
  import json
  from ijepa_jax import storage
  torch = _torch()
  file = storage.check_readable(path, "--hf")
  if file.is_dir():
    for name in ("model.safetensors", "pytorch_model.bin"):
      if (file / name).is_file():
        file = file / name
        break
    else:
      raise ConfigError(f"--hf={path}: no model.safetensors (or pytorch_model.bin) in this directory")
  if not file.is_file():
    raise ConfigError(f"--hf={path}: no such file or directory")
  with _local_file(os.fspath(file)) as local:
    if file.name.endswith(".safetensors"):
      try:
        from safetensors.torch import load_file
      except ImportError:
        raise ConfigError("reading .safetensors needs safetensors: pip install safetensors") from None
      tensors = load_file(local, device="cpu")
    else:
      tensors = torch.load(local, map_location="cpu", weights_only=True)
    state = {k: _numpy(v) for k, v in tensors.items()}
  config_file = file.parent / "config.json"
  hf_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
  return state, hf_config


# ============================================================================ name mapping
def _leaf(module: tuple[str, ...], kind: str, value: np.ndarray):
  """(our path, array) for a torch parameter: Linear/conv weights become kernels, LN weights scales."""
  if kind == "bias":
    return module + ("bias",), value
  if value.ndim == 4:    # conv [D, C, p, p] -> [p, p, C, D]
    return module + ("kernel",), value.transpose(2, 3, 1, 0)
  if value.ndim == 2:    # Linear [out, in] -> [in, out]
    return module + ("kernel",), value.T
  return module + ("scale",), value    # LayerNorm weight


def map_release(state: dict[str, np.ndarray], blocks: str, pos_key: str):
  """A release encoder/predictor state dict -> ({our path: array}, {our path: torch name}, pos_embed).

  `blocks` is the torch prefix of the transformer blocks ('blocks' or 'predictor_blocks'), which
  become our 'blocks_{i}'. Unknown names are kept under a ('?', name) path so they show up as
  unexpected in the final check.
  """
  flat, names, pos = {}, {}, None
  for key, value in state.items():
    if key == pos_key:
      pos = value
      continue
    if key == "mask_token":
      path = ("mask_token",)
    else:
      module, _, kind = key.rpartition(".")
      module = re.sub(rf"^{blocks}\.(\d+)\.", r"blocks_\1.", module + ".").rstrip(".")
      module = re.sub(r"^patch_embed\.proj$", "patch_embed", module)
      if kind not in ("weight", "bias") or not module:
        path = ("?", key)
      else:
        path, value = _leaf(tuple(module.split(".")), kind, value)
    flat[path], names[path] = value, key
  return flat, names, pos


_HF_V4_NAMES = (  # transformers 4.x IJepaModel names -> the 5.x names handled below
    (r"^encoder\.layer\.(\d+)\.", r"layers.\1."),
    (r"\.attention\.attention\.(query|key|value)\.", lambda m: f".attention.{m.group(1)[0]}_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)
_HF_MODULES = (  # transformers 5.x IJepaModel module -> ours
    (r"^embeddings\.patch_embeddings\.projection$", "patch_embed"),
    (r"^layers\.(\d+)\.layernorm_before$", r"blocks_\1.norm1"),
    (r"^layers\.(\d+)\.layernorm_after$", r"blocks_\1.norm2"),
    (r"^layers\.(\d+)\.attention\.o_proj$", r"blocks_\1.attn.proj"),
    (r"^layers\.(\d+)\.mlp\.(fc1|fc2)$", r"blocks_\1.mlp.\2"),
    (r"^layernorm$", "norm"),
)


def map_hf(state: dict[str, np.ndarray]):
  """A Hugging Face IJepaModel state dict -> ({our path: array}, {our path: HF name}, pos_embed, ignored).

  Accepts the transformers 4.x names (encoder.layer.{i}.attention.attention.query, ...) and the 5.x
  ones (layers.{i}.attention.q_proj, ...), with or without the 'ijepa.' prefix of the classifier.
  The separate q/k/v Linears are concatenated into our single qkv Dense in q|k|v order.
  """
  flat, names, pos, ignored, qkv = {}, {}, None, [], {}
  for key, value in state.items():
    name = key[len("ijepa."):] if key.startswith("ijepa.") else key
    for pattern, repl in _HF_V4_NAMES:
      name = re.sub(pattern, repl, name)
    if name == "embeddings.position_embeddings":
      pos = value
      continue
    if HF_IGNORED.match(name):
      ignored.append(key)
      continue
    module, _, kind = name.rpartition(".")
    m = re.match(r"^layers\.(\d+)\.attention\.([qkv])_proj$", module)
    if m and kind in ("weight", "bias"):
      qkv.setdefault((m.group(1), kind), {})[m.group(2)] = (key, value)
      continue
    for pattern, repl in _HF_MODULES:
      if re.match(pattern, module) and kind in ("weight", "bias"):
        path, value = _leaf(tuple(re.sub(pattern, repl, module).split(".")), kind, value)
        break
    else:
      path = ("?", key)
    flat[path], names[path] = value, key
  for (i, kind), parts in qkv.items():
    path = (f"blocks_{i}", "attn", "qkv", "kernel" if kind == "weight" else "bias")
    if set(parts) != {"q", "k", "v"}:
      for key, value in parts.values():   # an incomplete triple: unexpected, and qkv stays missing
        flat[("?", key)], names[("?", key)] = value, key
      continue
    value = np.concatenate([parts[s][1] for s in "qkv"], axis=0)   # rows q|k|v, as the release's qkv
    flat[path], names[path] = (value.T if kind == "weight" else value), "+".join(parts[s][0] for s in "qkv")
  return flat, names, pos, ignored


# ============================================================================ checks
def _join(path) -> str:
  return "/".join(path)


def check_pos_embed(pos, width: int, grid: int, what: str, problems: list[str]) -> None:
  """The checkpoint's (fixed) positional embedding must be ours: else the config's geometry is wrong."""
  from ijepa_jax.models import sincos_pos_embed_2d
  if pos is None:
    return  # not every export keeps the constant; the weights alone still fix every shape we check
  ours = sincos_pos_embed_2d(width, grid, grid)
  pos = np.asarray(pos).reshape(-1, pos.shape[-1])
  if pos.shape != ours.shape:
    problems.append(f"{what}: shape {list(pos.shape)} but the config gives {grid}x{grid} patches of width {width} "
                    f"{list(ours.shape)}: check --config.data.image_size / --config.model.patch_size")
    return
  err = float(np.max(np.abs(pos - ours)))
  if err > POS_ATOL:
    problems.append(f"{what}: differs from the 2-D sin-cos embedding for a {grid}x{grid} grid by {err:.3g} "
                    f"(> {POS_ATOL}): check --config.data.image_size / --config.model.patch_size")


def fill(abstract: dict, flat: dict, names: dict, what: str, problems: list[str]) -> dict:
  """Our nested param dict with the shapes of `abstract`, from {path: array}; problems are appended."""
  from flax import traverse_util
  wanted = traverse_util.flatten_dict(abstract)
  out = {}
  for path, spec in wanted.items():
    if path not in flat:
      problems.append(f"{what}: missing {_join(path)} {list(spec.shape)}")
      continue
    value = flat[path]
    if tuple(value.shape) != tuple(spec.shape):
      problems.append(f"{what}: {names[path]} -> {_join(path)} has shape {list(value.shape)}, "
                      f"expected {list(spec.shape)}")
      continue
    out[path] = np.asarray(value, dtype=spec.dtype)
  for path in flat:
    if path not in wanted:
      problems.append(f"{what}: unexpected {names[path]}")
  return traverse_util.unflatten_dict(out)


def _raise(problems: list[str]) -> None:
  if problems:
    shown = problems[:40] + ([f"... and {len(problems) - 40} more"] if len(problems) > 40 else [])
    raise ConfigError("the checkpoint does not match the config's model (--config.model.name, depth, "
                      "num_heads, mlp_dim, predictor_width/depth, --config.data.image_size, "
                      "--config.model.patch_size): " + "; ".join(shown))


# ============================================================================ the state
def build_abstract(config):
  """(build outputs, optimizer) on a one-device mesh: what loading.load restores into, whatever the mesh."""
  import jax
  import ml_collections
  from ijepa_jax import optim, sharding, train
  from ijepa_jax.mask_strategies import make_sampler
  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1))
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  sampler = make_sampler(config.mask, config.data.image_size // config.model.patch_size)
  # Schedule lengths only shape the optimizer's functions, not its state: any positive values do.
  encoder, abstract_state, init, _ = train.build(config, mesh, sampler, total_steps=1, warmup_steps=0)
  return encoder, abstract_state, init, optim.make_optimizer(config.optim)


def make_state(built, encoder, target, predictor=None):
  """A TrainState at step 0 with these param trees (numpy) and a fresh optimizer state.

  built: build_abstract(config). predictor=None keeps the predictor of a fresh init (seeded by config.seed).
  """
  import jax
  import jax.numpy as jnp
  from ijepa_jax.step import TrainState
  _, abstract_state, init, tx = built
  shardings = jax.tree.map(lambda s: s.sharding, abstract_state)
  if predictor is None:
    # Only the predictor's part of a fresh init is computed: XLA drops the unused outputs (for ViT-H
    # that saves ~10 GB of encoder, target and optimizer state).
    predictor = jax.jit(lambda: init().params["predictor"])()
  params = jax.device_put({"encoder": encoder, "predictor": predictor}, shardings.params)
  target = jax.device_put(target, shardings.target)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros([], jnp.int32), shardings.step)
  return TrainState(step=step, params=params, target=target, opt_state=opt_state)


def _scanned(config) -> bool:
  return bool(config.model.scan_layers)


def _unrolled(config):
  """The config with model.scan_layers=False: the layout the name maps fill."""
  import ml_collections
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.scan_layers = False
  return config


def _width(abstract) -> int:
  return abstract["blocks_0"]["norm1"]["scale"].shape[-1]


def release_params(config, abstract_state, release: dict[str, dict[str, np.ndarray]]):
  """(encoder, predictor, target) numpy param trees from read_release's dicts, every tensor checked."""
  problems: list[str] = []
  grid = config.data.image_size // config.model.patch_size
  trees = {}
  for entry, blocks, pos_key, abstract in (
      ("encoder", "blocks", "pos_embed", abstract_state.params["encoder"]),
      ("target_encoder", "blocks", "pos_embed", abstract_state.target),
      ("predictor", "predictor_blocks", "predictor_pos_embed", abstract_state.params["predictor"])):
    flat, names, pos = map_release(release[entry], blocks, pos_key)
    check_pos_embed(pos, _width(abstract), grid, f"{entry}.{pos_key}", problems)
    trees[entry] = fill(abstract, flat, names, entry, problems)
  _raise(problems)
  return trees["encoder"], trees["predictor"], trees["target_encoder"]


def hf_params(config, abstract_state, state: dict[str, np.ndarray], hf_config: dict | None = None):
  """(encoder numpy param tree, ignored HF names, warnings) from read_hf's state dict."""
  problems: list[str] = []
  grid = config.data.image_size // config.model.patch_size
  flat, names, pos, ignored = map_hf(state)
  abstract = abstract_state.params["encoder"]
  check_pos_embed(pos, _width(abstract), grid, "embeddings.position_embeddings", problems)
  encoder = fill(abstract, flat, names, "encoder", problems)
  _raise(problems)
  warnings = []
  hf_config = hf_config or {}
  # Our model has the release's fixed eps and exact GELU: weights still import, outputs would differ.
  if hf_config.get("layer_norm_eps", 1e-6) != 1e-6:
    warnings.append(f"the Hugging Face config has layer_norm_eps={hf_config['layer_norm_eps']}; "
                    "this model (like the release) uses 1e-6")
  if hf_config.get("hidden_act", "gelu") != "gelu":
    warnings.append(f"the Hugging Face config has hidden_act={hf_config['hidden_act']!r}; "
                    "this model (like the release) uses exact GELU")
  return encoder, ignored, warnings


def write(config, out: str, state) -> str:
  """OUT/checkpoints/0 + OUT/config.json, loadable by ijepa_jax.loading and resumable by train_and_evaluate."""
  from ijepa_jax import checkpoint, storage
  existing = storage.path(checkpoint.checkpoint_dir(out))
  if existing.is_dir() and any(existing.iterdir()):
    raise ConfigError(f"{existing} already holds checkpoints: choose an empty --out")
  storage.check_writable(out, "--out")
  manager = checkpoint.make_manager(out, config.keep_checkpoints, config.checkpoint_every, async_save=False)
  # An empty data position: training from here reads the data order of this config from the state's step.
  checkpoint.save(manager, 0, state, position={}, force=True)
  manager.wait_until_finished()
  manager.close()
  storage.write_text(storage.join(out, "config.json"), config.to_json_best_effort(indent=2))
  return storage.join(checkpoint.checkpoint_dir(out), "0")


def convert(config, out: str, torch_path: str | None = None, hf_path: str | None = None,
            log=print) -> str:
  """Converts one checkpoint (exactly one of torch_path / hf_path) into the workdir `out`."""
  if (torch_path is None) == (hf_path is None):
    raise ConfigError("give exactly one of --torch=RELEASE.pth.tar or --hf=DIR_OR_FILE")
  from ijepa_jax import train
  from ijepa_jax.models import stack_blocks
  train.check_config(config)
  built = build_abstract(config)
  unrolled = build_abstract(_unrolled(config))[1] if _scanned(config) else built[1]
  layout = stack_blocks if _scanned(config) else (lambda tree: tree)
  if torch_path is not None:
    encoder, predictor, target = release_params(config, unrolled, read_release(torch_path))
    state = make_state(built, layout(encoder), layout(target), layout(predictor))
    log(f"Imported encoder, predictor and target_encoder from {torch_path}.")
  else:
    encoder, ignored, warnings = hf_params(config, unrolled, *read_hf(hf_path))
    encoder = layout(encoder)
    state = make_state(built, encoder, encoder, None)
    log(f"Imported the encoder from {hf_path} as both the context and the target encoder; "
        f"the predictor is freshly initialised (seed {config.seed}): Hugging Face IJepaModel has none.")
    if ignored:
      log(f"Not imported (no part of the I-JEPA encoder): {', '.join(ignored)}")
    for w in warnings:
      log(f"warning: {w}")
  path = write(config, out, state)
  log(f"Wrote {path} (step 0, fresh optimizer state) and {out}/config.json.\n"
      f"Load its target encoder with ijepa_jax.loading.load_encoder({out!r}); train on with "
      f"python -m ijepa_jax.main --config=CONFIG --workdir={out}")
  return path


def relayout(config, workdir: str, out: str, log=print) -> str:
  """The latest checkpoint of `workdir` in the block layout of `config` (model.scan_layers), written to `out`.

  Everything of the train state is kept (step, params, EMA target, optimizer moments); the data pipeline's
  position is not (as for an import, training from `out` starts the pipeline afresh).
  """
  import jax
  from ijepa_jax import checkpoint, loading, train
  from ijepa_jax.models import stack_blocks, unstack_blocks
  train.check_config(config)
  saved, _, state = loading.load(workdir)
  state = (stack_blocks if _scanned(config) else unstack_blocks)(jax.tree.map(np.asarray, state))
  abstract = build_abstract(config)[1]
  wrong = checkpoint.mismatches(checkpoint.manifest(state), abstract)
  if wrong:
    raise ConfigError(f"{workdir}'s checkpoint does not match the config's model apart from the layout:\n"
                      + "\n".join(wrong[:40]))
  state = jax.device_put(state, jax.tree.map(lambda s: s.sharding, abstract))
  path = write(config, out, state)
  layouts = {False: "unrolled (blocks_{i})", True: "scanned ('blocks', leading layer axis)"}
  log(f"Wrote {path} (step {int(state.step)}): {layouts[_scanned(saved)]} -> {layouts[_scanned(config)]}; "
      f"train on with python -m ijepa_jax.main --config=CONFIG --workdir={out}")
  return path


# ============================================================================ command line
if __name__ == "__main__":
  from absl import app, flags, logging
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py) describing the model.")
  _TORCH = flags.DEFINE_string("torch", None, "The release's checkpoint (*.pth.tar).")
  _HF = flags.DEFINE_string("hf", None, "A Hugging Face IJepaModel: model.safetensors or its directory.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "A workdir to rewrite in the config's model.scan_layers layout.")
  _OUT = flags.DEFINE_string("out", None, "Workdir to write (checkpoints/0 and config.json).")
  flags.mark_flags_as_required(["config", "out"])

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)   # no INFO lines from jax's backend search
    try:
      if _WORKDIR.value is not None:
        if _TORCH.value is not None or _HF.value is not None:
          raise ConfigError("give one of --torch, --hf or --workdir")
        relayout(_CONFIG.value, _WORKDIR.value, _OUT.value)
      else:
        convert(_CONFIG.value, _OUT.value, _TORCH.value, _HF.value)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(_main, flags_parser=flags_parser(
      "python -m ijepa_jax.convert (--torch=RELEASE.pth.tar | --hf=DIR | --workdir=RUN) --config=configs/NAME.py "
      "--out=DIR "
      "[--config.KEY=VALUE ...]"))
