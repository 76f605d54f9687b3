"""Feature extraction and the linear probe."""
import jax
import jax.numpy as jnp
import numpy as np

from conftest import tiny_config
from ijepa_jax import sharding
from ijepa_jax.evaluation import features, linear
from ijepa_jax.models import make_models


def test_probe_separates_gaussian_blobs_and_picks_a_penalty():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 20)) * 3
  y = rng.integers(0, 5, 2000)
  x = centers[y] + rng.normal(size=(2000, 20))
  r = linear.probe(x[:1500], y[:1500], x[1500:], y[1500:], (0.0, 1e-2), seed=0)
  assert r["top1"] > 0.95 and r["weight_decay"] in (0.0, 1e-2)
  noise = linear.probe(rng.normal(size=(1500, 20)), y[:1500], rng.normal(size=(500, 20)), y[1500:], (0.0,))
  assert noise["top1"] < 0.35                       # chance is 0.2: the probe cannot invent signal


def test_extract_shapes_pooling_and_last4():
  c = tiny_config()
  c.model.depth = 4
  enc, _ = make_models(c.model, 16, 1, jnp.float32)
  images = np.random.default_rng(0).integers(0, 255, (10, 16, 16, 1), dtype=np.uint8)
  params = jax.jit(enc.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))["params"]
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  mesh = sharding.make_mesh(c.mesh)
  pooled = features.extract(enc, params, images, (0.5,), (0.5,), 4, mesh)
  tokens = features.extract(enc, params, images, (0.5,), (0.5,), 4, mesh, pool="none")
  last4 = features.extract(enc, params, images, (0.5,), (0.5,), 4, mesh, layers="last4")
  assert pooled.shape == (10, 32) and tokens.shape == (10, 64, 32) and last4.shape == (10, 128)
  np.testing.assert_allclose(pooled, tokens.mean(1), rtol=1e-5, atol=1e-6)
  # the last of the 4 concatenated layers is the encoder's final output
  np.testing.assert_allclose(last4[:, 96:], pooled, rtol=1e-4, atol=1e-5)


def test_extract_cli_matches_the_restored_target_encoder(tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  from ijepa_jax import train
  from ijepa_jax.step import normalise
  train.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path / "run"))
  images = np.random.default_rng(1).integers(0, 255, (6, 16, 16, 1), dtype=np.uint8)
  np.save(tmp_path / "x.npy", images)
  base = [sys.executable, "-m", "ijepa_jax.extract", f"--checkpoint={tmp_path / 'run'}", f"--images={tmp_path / 'x.npy'}"]
  proc = subprocess.run(base + [f"--out={tmp_path / 'f.npy'}", "--pool=none"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  config, enc, state = train.load(str(tmp_path / "run"))
  expected = enc.apply({"params": state.target}, normalise(images, config.data.mean, config.data.std))
  got = np.load(tmp_path / "f.npy")
  assert got.shape == (6, 64, 32) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.save(tmp_path / "bad.npy", images[:, :8])
  bad = subprocess.run(base[:-1] + [f"--images={tmp_path / 'bad.npy'}", f"--out={tmp_path / 'g.npy'}"],
                       cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and "resize the images to 16 px" in bad.stderr and "Traceback" not in bad.stderr
