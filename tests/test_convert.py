"""Checkpoint import: Hugging Face IJepaModel parity, the release's layout (exact, with a torch
forward), clear errors for mismatched checkpoints, and training on from an imported workdir."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO, tiny_config
from ijepa_jax import convert, train
from ijepa_jax.errors import ConfigError
from ijepa_jax.models import sincos_pos_embed_2d

torch = pytest.importorskip("torch")

RTOL = 1e-5


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _geometry(image, patch, width, depth, heads, **more):
  """tiny_config with this encoder (3 channels); the predictor stays tiny (one 16-wide block)."""
  return tiny_config(**{"data.image_size": image, "data.channels": 3, "data.mean": (0.5,) * 3,
                        "data.std": (0.5,) * 3, "model.patch_size": patch, "model.width": width,
                        "model.depth": depth, "model.num_heads": heads, "model.mlp_dim": 4 * width,
                        **more})


def _encode(encoder, params, images_nchw):
  return np.asarray(jax.jit(encoder.apply)({"params": params}, images_nchw.transpose(0, 2, 3, 1)))


# ============================================================================ Hugging Face
def _hf_model(width, heads, image, patch, **kw):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("safetensors")
  torch.manual_seed(0)
  hf_config = transformers.IJepaConfig(
      hidden_size=width, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=4 * width,
      image_size=image, patch_size=patch, num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu", **kw)
  model = transformers.IJepaModel(hf_config).eval()
  with torch.no_grad():
    # A real export holds the release's sin-cos table (HF initialises it randomly); random biases
    # and LayerNorm affines (HF inits them 0 / 1) make a mixed-up bias or scale visible.
    grid = image // patch
    model.embeddings.position_embeddings.copy_(torch.from_numpy(sincos_pos_embed_2d(width, grid, grid))[None])
    for name, p in model.named_parameters():
      if name.endswith("bias") or "layernorm" in name:
        p.add_(0.2 * torch.randn_like(p))
  return model


@pytest.mark.parametrize("width,heads,image,patch", [(64, 4, 32, 4), (384, 6, 224, 16)], ids=["tiny", "small"])
def test_hf_ijepa_model_parity(tmp_path, width, heads, image, patch):
  model = _hf_model(width, heads, image, patch)
  grid = image // patch
  model.save_pretrained(tmp_path / "hf")
  assert (tmp_path / "hf" / "model.safetensors").exists()

  config = _geometry(image, patch, width, 2, heads)
  lines = []
  convert.convert(config, str(tmp_path / "out"), hf_path=str(tmp_path / "hf"), log=lines.append)
  assert "predictor is freshly initialised" in lines[0]
  _, encoder, state = train.load(str(tmp_path / "out"))
  jax.tree.map(np.testing.assert_array_equal, state.params["encoder"], state.target)
  if width == 64:   # the predictor is the fresh init of config.seed
    fresh = convert.build_abstract(config)[2]().params["predictor"]
    jax.tree.map(np.testing.assert_array_equal, state.params["predictor"], fresh)

  images = np.random.default_rng(0).standard_normal((2, 3, image, image)).astype(np.float32)
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(images)).last_hidden_state.numpy()
  ours = _encode(encoder, state.target, images)
  assert ours.shape == ref.shape
  rel = _rel(ours, ref)
  print(f"HF IJepaModel parity ({width} wide, {heads} heads, {grid}x{grid} patches): max rel err {rel:.2e}")
  assert rel <= RTOL


def test_hf_import_into_a_scan_layers_workdir(tmp_path):
  """model.scan_layers=True: the names map to blocks_{i} as always and are stacked at the end; the
  scanned encoder computes the Hugging Face model's output as the unrolled import does."""
  width, heads, image, patch = 64, 4, 32, 4
  model = _hf_model(width, heads, image, patch)
  model.save_pretrained(tmp_path / "hf")
  convert.convert(_geometry(image, patch, width, 2, heads, **{"model.scan_layers": True}), str(tmp_path / "out"),
                  hf_path=str(tmp_path / "hf"), log=lambda _: None)
  _, encoder, state = train.load(str(tmp_path / "out"))
  assert encoder.scan_layers and state.target["blocks"]["attn"]["qkv"]["kernel"].shape == (2, width, 3 * width)
  images = np.random.default_rng(0).standard_normal((2, 3, image, image)).astype(np.float32)
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(images)).last_hidden_state.numpy()
  assert _rel(_encode(encoder, state.target, images), ref) <= RTOL


def test_bf16_matches_torch_autocast(tmp_path):
  """dtype=bfloat16 against torch code we did not write: the Hugging Face IJepaModel (eager attention) under
  CUDA's bf16 autocast as experiments/cuda_autocast.py reproduces it on CPU. The yardstick is torch's own:
  our bf16 features must be closer to torch's bf16 than torch's bf16 is to its fp32 (relative L2)."""
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  from cuda_autocast import cuda_autocast
  width, heads, image, patch = 128, 4, 64, 8
  model = _hf_model(width, heads, image, patch, attn_implementation="eager")
  model.save_pretrained(tmp_path / "hf")
  convert.convert(_geometry(image, patch, width, 2, heads, dtype="bfloat16"), str(tmp_path / "out"),
                  hf_path=str(tmp_path / "hf"), log=lambda _: None)
  config, encoder, state = train.load(str(tmp_path / "out"))
  assert config.dtype == "bfloat16" and encoder.dtype == jax.numpy.bfloat16
  images = np.random.default_rng(0).standard_normal((4, 3, image, image)).astype(np.float32)
  with torch.no_grad():
    fp32 = model(pixel_values=torch.from_numpy(images)).last_hidden_state.numpy()
    with cuda_autocast(torch):
      bf16 = model(pixel_values=torch.from_numpy(images)).last_hidden_state.float().numpy()
  ours = _encode(encoder, state.target, images)
  dist = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
  print(f"bf16: ours vs torch autocast {dist(ours, bf16):.2e}; torch autocast vs fp32 {dist(bf16, fp32):.2e}")
  assert dist(ours, bf16) <= 0.5 * dist(bf16, fp32)


def test_hf_transformers_v4_names_are_accepted():
  """Hub checkpoints written by transformers 4.x name q/k/v 'attention.attention.query' etc."""
  rng = np.random.default_rng(0)
  d = 8
  state = {"embeddings.patch_embeddings.projection.weight": rng.normal(size=(d, 3, 2, 2)),
           "embeddings.patch_embeddings.projection.bias": rng.normal(size=d),
           "layernorm.weight": rng.normal(size=d), "layernorm.bias": rng.normal(size=d),
           "pooler.dense.weight": rng.normal(size=(d, d))}
  p = "encoder.layer.0."
  for s in ("query", "key", "value"):
    state[f"{p}attention.attention.{s}.weight"] = rng.normal(size=(d, d))
    state[f"{p}attention.attention.{s}.bias"] = rng.normal(size=d)
  for name, shape in (("attention.output.dense", (d, d)), ("intermediate.dense", (4 * d, d)),
                      ("output.dense", (d, 4 * d))):
    state[f"{p}{name}.weight"], state[f"{p}{name}.bias"] = rng.normal(size=shape), rng.normal(size=shape[0])
  for ln in ("layernorm_before", "layernorm_after"):
    state[f"{p}{ln}.weight"], state[f"{p}{ln}.bias"] = rng.normal(size=d), rng.normal(size=d)
  flat, names, pos, ignored = convert.map_hf(state)
  assert pos is None and ignored == ["pooler.dense.weight"]
  assert not [path for path in flat if path[0] == "?"]
  qkv = flat[("blocks_0", "attn", "qkv", "kernel")]
  np.testing.assert_array_equal(qkv[:, d:2 * d], state[f"{p}attention.attention.key.weight"].T)
  np.testing.assert_array_equal(flat[("blocks_0", "mlp", "fc2", "kernel")], state[f"{p}output.dense.weight"].T)
  assert ("blocks_0", "norm2", "scale") in flat and ("norm", "bias") in flat


# ============================================================================ the release's layout
def _to_release(tree, blocks: str, pos_key: str, grid: int) -> dict:
  """Our param tree -> a release state dict (module.-prefixed torch tensors): the inverse mapping."""
  out = {}
  for path, value in traverse_util.flatten_dict(tree).items():
    value = np.asarray(value)
    if path == ("mask_token",):
      name = "mask_token"
    else:
      module = re.sub(r"^blocks_(\d+)", rf"{blocks}.\1", ".".join(path[:-1]))
      module = "patch_embed.proj" if module == "patch_embed" else module
      if path[-1] == "kernel":
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      name = f"{module}.{'bias' if path[-1] == 'bias' else 'weight'}"
    out[f"module.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
  width = traverse_util.flatten_dict(tree)[("blocks_0", "norm1", "scale")].shape[0]
  out[f"module.{pos_key}"] = torch.from_numpy(sincos_pos_embed_2d(width, grid, grid))[None]
  return out


def _noisy(tree, seed):
  """Random values everywhere (init leaves biases 0 and LayerNorms 1, which would hide mix-ups)."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32)
                                      for x in leaves])


def _fake_release(config, path):
  """A release-style .pth.tar from a random model with this config; returns our (params, target)."""
  built = convert.build_abstract(config)
  fresh = built[2]()
  params, target = _noisy(fresh.params, 1), _noisy(fresh.params["encoder"], 2)
  grid = config.data.image_size // config.model.patch_size
  ckpt = {"encoder": _to_release(params["encoder"], "blocks", "pos_embed", grid),
          "predictor": _to_release(params["predictor"], "predictor_blocks", "predictor_pos_embed", grid),
          "target_encoder": _to_release(target, "blocks", "pos_embed", grid),
          "opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                  "param_groups": [{"lr": 1e-3, "weight_decay": 0.04, "params": [0]}]},
          "scaler": None, "epoch": 300, "loss": 0.123, "batch_size": 128, "world_size": 16, "lr": 1e-3}
  torch.save(ckpt, path)
  return params, target, ckpt


def _torch_encoder(sd, images, heads, patch):
  """The release encoder's forward, written from REFERENCE.md with torch ops (an independent check
  of the qkv row layout [3][heads][head_dim], conv layout and pre-norm order)."""
  f = torch.nn.functional
  sd = {k[len("module."):]: v for k, v in sd.items()}
  x = f.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
  x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]
  b, n, d = x.shape
  i = 0
  while f"blocks.{i}.norm1.weight" in sd:
    w = lambda name: (sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"])  # noqa: E731
    y = f.layer_norm(x, (d,), *w("norm1"), eps=1e-6)
    q, k, v = f.linear(y, *w("attn.qkv")).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1) @ v
    x = x + f.linear(a.transpose(1, 2).reshape(b, n, d), *w("attn.proj"))
    y = f.layer_norm(x, (d,), *w("norm2"), eps=1e-6)
    x = x + f.linear(f.gelu(f.linear(y, *w("mlp.fc1"))), *w("mlp.fc2"))
    i += 1
  return f.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """One tiny fake release checkpoint (tiny_config, 3 channels, depth 2), converted once."""
  tmp = tmp_path_factory.mktemp("release")
  config = tiny_config(**{"data.channels": 3, "data.mean": (0.5,) * 3, "data.std": (0.5,) * 3,
                          "model.depth": 2})
  params, target, ckpt = _fake_release(config, tmp / "ijepa.pth.tar")
  lines = []
  convert.convert(config, str(tmp / "out"), torch_path=str(tmp / "ijepa.pth.tar"), log=lines.append)
  return dict(config=config, params=params, target=target, ckpt=ckpt, tmp=tmp, out=str(tmp / "out"), lines=lines)


def test_release_checkpoint_is_imported_exactly(release):
  config, encoder, state = train.load(release["out"])
  jax.tree.map(np.testing.assert_array_equal, state.params, release["params"])
  jax.tree.map(np.testing.assert_array_equal, state.target, release["target"])
  assert int(state.step) == 0
  assert all(float(np.max(np.abs(x))) == 0 for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
  assert config.model.depth == 2
  assert "encoder, predictor and target_encoder" in release["lines"][0]

  images = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    ref = _torch_encoder(release["ckpt"]["target_encoder"], torch.from_numpy(images), 2, 2).numpy()
  rel = _rel(_encode(encoder, state.target, images), ref)
  print(f"release-layout encoder vs torch forward: max rel err {rel:.2e}")
  assert rel <= RTOL


def test_release_checkpoint_into_a_bucket(release, gcs):
  """convert with the release's checkpoint in a bucket and --out=gs://...: the imported checkpoint and
  config.json land in the bucket and load back exactly."""
  from ijepa_jax import storage
  bucket = gcs("release")
  storage.path(f"{bucket}/ijepa.pth.tar").write_bytes((release["tmp"] / "ijepa.pth.tar").read_bytes())
  out = gcs("converted")
  convert.convert(release["config"], out, torch_path=f"{bucket}/ijepa.pth.tar", log=lambda *_: None)
  _, _, state = train.load(out)
  jax.tree.map(np.testing.assert_array_equal, state.params, release["params"])
  jax.tree.map(np.testing.assert_array_equal, state.target, release["target"])
  with pytest.raises(ConfigError, match="no such file"):
    convert.convert(release["config"], gcs("x"), torch_path=f"{bucket}/missing.pth.tar", log=None)


def test_release_checkpoint_into_a_scan_layers_workdir(release, tmp_path):
  """The same import with model.scan_layers=True: every tensor stacked on the layer axis, the same encoder
  output; --workdir rewrites it back into the unrolled layout exactly."""
  from ijepa_jax.models import unstack_blocks
  config = tiny_config(**{"data.channels": 3, "data.mean": (0.5,) * 3, "data.std": (0.5,) * 3,
                          "model.depth": 2, "model.scan_layers": True})
  convert.convert(config, str(tmp_path / "scan"), torch_path=str(release["tmp"] / "ijepa.pth.tar"),
                  log=lambda _: None)
  saved, encoder, state = train.load(str(tmp_path / "scan"))
  assert saved.model.scan_layers and encoder.scan_layers
  assert set(state.params["predictor"]) == {"predictor_embed", "mask_token", "blocks", "predictor_norm",
                                            "predictor_proj"}
  jax.tree.map(np.testing.assert_array_equal, unstack_blocks(state.params), release["params"])
  jax.tree.map(np.testing.assert_array_equal, unstack_blocks(state.target), release["target"])
  _, unrolled_encoder, unrolled = train.load(release["out"])
  images = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
  np.testing.assert_allclose(_encode(encoder, state.target, images),
                             _encode(unrolled_encoder, unrolled.target, images), rtol=1e-6, atol=1e-6)

  lines = []
  convert.relayout(release["config"], str(tmp_path / "scan"), str(tmp_path / "back"), log=lines.append)
  assert "scanned ('blocks', leading layer axis) -> unrolled (blocks_{i})" in lines[0]
  _, _, back = train.load(str(tmp_path / "back"))
  jax.tree.map(np.testing.assert_array_equal, back, unrolled)


def test_mismatched_checkpoints_name_what_is_wrong(release, tmp_path):
  config, ckpt = release["config"], dict(release["ckpt"])
  enc = dict(ckpt["encoder"])
  del enc["module.blocks.1.attn.proj.bias"]
  enc["module.blocks.1.attn.extra.weight"] = torch.zeros(3, 3)
  enc["module.norm.weight"] = torch.zeros(7)
  pred = {k[len("module."):]: v for k, v in ckpt["predictor"].items()}   # no prefix: accepted
  pred["predictor_pos_embed"] = pred["predictor_pos_embed"].flip(1)
  torch.save({**ckpt, "encoder": enc, "predictor": pred}, tmp_path / "bad.pth.tar")
  with pytest.raises(ConfigError) as e:
    convert.convert(config, str(tmp_path / "out"), torch_path=str(tmp_path / "bad.pth.tar"), log=None)
  msg = str(e.value)
  assert "encoder: missing blocks_1/attn/proj/bias [32]" in msg
  assert "encoder: unexpected blocks.1.attn.extra.weight" in msg
  assert "encoder: norm.weight -> norm/scale has shape [7], expected [32]" in msg
  assert "predictor.predictor_pos_embed: differs from the 2-D sin-cos embedding" in msg
  assert "target_encoder" not in msg
  assert not os.path.exists(tmp_path / "out")

  # A config with another image size: the positional embedding says so.
  with pytest.raises(ConfigError, match=r"encoder.pos_embed: shape \[64, 32\] but the config gives 12x12 patches"):
    convert.convert(tiny_config(**{"data.channels": 3, "data.mean": (0.5,) * 3, "data.std": (0.5,) * 3,
                                   "model.depth": 2, "data.image_size": 24}),
                    str(tmp_path / "out"), torch_path=str(release["tmp"] / "ijepa.pth.tar"), log=None)
  with pytest.raises(ConfigError, match="not the release's checkpoint|no \\['encoder'"):
    torch.save({"model": {}}, tmp_path / "other.pth.tar")
    convert.convert(config, str(tmp_path / "out"), torch_path=str(tmp_path / "other.pth.tar"), log=None)


def test_training_continues_from_an_imported_checkpoint(release, tmp_path):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(release["out"], workdir)
  out = train.train_and_evaluate(tiny_config(**{"data.channels": 3, "data.mean": (0.5,) * 3,
                                                "data.std": (0.5,) * 3, "model.depth": 2, "run_steps": 2}),
                                 str(workdir))
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  assert int(out["state"].step) == 2
  # Trained from the imported weights: moved a little, not re-initialised.
  before = np.asarray(release["params"]["encoder"]["norm"]["scale"])
  after = np.asarray(out["state"].params["encoder"]["norm"]["scale"])
  assert 0 < np.max(np.abs(after - before)) < 0.05


def test_cli(release, tmp_path):
  overrides = ["--config.data.channels=3", "--config.data.mean=(0.5,0.5,0.5)", "--config.data.std=(0.5,0.5,0.5)",
               "--config.data.image_size=16", "--config.model.patch_size=2", "--config.model.width=32",
               "--config.model.depth=2", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
               "--config.model.predictor_width=16", "--config.model.predictor_depth=1",
               "--config.model.predictor_heads=2", "--config.mask.reference_batch=16"]
  cmd = [sys.executable, "-m", "ijepa_jax.convert", f"--torch={release['tmp'] / 'ijepa.pth.tar'}",
         "--config=configs/fashion_mnist.py", f"--out={tmp_path / 'cli'}"]
  done = subprocess.run(cmd + overrides, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "Wrote" in done.stdout and os.path.isdir(tmp_path / "cli" / "checkpoints" / "0")
  wide = [o.replace("predictor_width=16", "predictor_width=64") for o in overrides]
  done = subprocess.run(cmd + wide, cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 2 and done.stderr.startswith("error: the checkpoint does not match"), done.stderr
  assert ("predictor: predictor_embed.weight -> predictor_embed/kernel has shape [32, 16], expected [32, 64]"
          in done.stderr)


def test_an_imported_data_state_fits_any_process_count(release, monkeypatch):
  """A converted checkpoint is written by one process; its data item (one file, an empty position) restores on
  any number."""
  from etils import epath
  from ijepa_jax import checkpoint
  data_dir = epath.Path(release["out"]) / "checkpoints" / "0" / "data"
  assert (data_dir / "data.json").exists() and not list(data_dir.glob("process_*.json"))   # one file for all
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  monkeypatch.setattr(jax, "process_index", lambda: 3)
  restored = checkpoint.DataStateHandler().restore(data_dir)
  assert restored["position"] == {} and "params/encoder/patch_embed/kernel" in restored["state"]
