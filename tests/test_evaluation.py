"""Feature extraction and the probes: linear, low-shot, k-NN, attentive, and the evaluate CLI."""
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from ijepa_jax import sharding
from ijepa_jax.evaluation import attentive, features, linear
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


def test_linear_fit_reaches_the_minimum_on_correlated_features():
  """Every fit on the penalty path ends at its minimum (gradient ~0), on features as correlated as pooled
  ViT tokens are; plain L-BFGS from zero was still far off after 300 iterations on such features."""
  rng = np.random.default_rng(0)
  n, d, c = 3000, 64, 5
  mixing = rng.normal(size=(d, d)) * np.logspace(0, -3, d)[None, :]   # singular values over 3 decades
  x = rng.normal(size=(n, d)) @ mixing.T
  x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)                # standardised, as the probe does
  y = np.argmax(x @ rng.normal(size=(d, c)) + rng.gumbel(size=(n, c)), axis=1)
  for wd, p in linear.fit_path(x, y, c, (1e-2, 1e-4, 1e-6)).items():
    def objective(w, b):
      ce = -jax.nn.log_softmax(x @ w + b)[np.arange(n), y].mean()
      return ce + 0.5 * wd * jnp.sum(w ** 2)
    gw, gb = jax.grad(objective, argnums=(0, 1))(p["w"], p["b"])
    assert float(jnp.sqrt(jnp.sum(gw ** 2) + jnp.sum(gb ** 2))) < 1e-4, wd


def _where_is_the_signal(n, seed):
  """4 tokens per example, each carrying its position (one-hot); one token also carries a signal, and
  the class is that token's position. Averaging the tokens leaves nothing: every pooled vector is the
  same up to noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 4, n)
  x = np.zeros((n, 4, 8), np.float32)
  x[:, np.arange(4), np.arange(4)] = 1.0
  x[np.arange(n), y, 4] = 3.0
  return x + 0.1 * rng.normal(size=x.shape).astype(np.float32), y


def test_attentive_probe_finds_what_average_pooling_loses():
  train_x, train_y = _where_is_the_signal(2000, 0)
  test_x, test_y = _where_is_the_signal(500, 1)
  r = attentive.probe(train_x, train_y, test_x, test_y, lrs=(3e-3,), weight_decays=(0.01,), epochs=40, seed=0)
  assert r["top1"] > 0.9 and r["lr"] == 3e-3 and r["weight_decay"] == 0.01
  pooled = linear.probe(train_x.mean(1), train_y, test_x.mean(1), test_y, (0.0,))
  assert pooled["top1"] < 0.4                      # chance is 0.25
  again = attentive.probe(train_x, train_y, test_x, test_y, lrs=(3e-3,), weight_decays=(0.01,), epochs=40, seed=0)
  assert again == r                                 # deterministic from the seed


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


def test_extract_pads_a_short_input_only_to_the_data_parallel_size(monkeypatch):
  """2 images with batch_size=256 run one forward pass of 2 images per device, not of 256; a remainder
  costs one more compiled shape, not one per call."""
  c = tiny_config()
  enc, _ = make_models(c.model, 16, 1, jnp.float32)
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                        jax.jit(enc.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))["params"],
                        is_leaf=lambda x: hasattr(x, "unbox"))
  seen = []  # the batch shapes the jitted forward pass is traced (and compiled) for
  original = features.tokens
  monkeypatch.setattr(features, "tokens", lambda e, p, x, layers="last": seen.append(x.shape[0]) or original(e, p, x, layers))
  images = np.random.default_rng(0).integers(0, 255, (600, 16, 16, 1), dtype=np.uint8)
  dp = len(jax.devices())
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=dp, fsdp=1)))
  two = features.extract(enc, params, images[:2], (0.5,), (0.5,), 256, mesh)
  assert seen == [-(-2 // dp) * dp] and two.shape == (2, 32)
  seen.clear()
  many = features.extract(enc, params, images, (0.5,), (0.5,), 256, mesh)
  assert seen == [256, -(-(600 - 512) // dp) * dp] and many.shape == (600, 32)   # 256, 256 (same shape), 88
  np.testing.assert_allclose(many[:2], two, rtol=1e-5, atol=1e-6)


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
  assert not re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr[:3000]  # no absl INFO lines (Orbax's)
  config, enc, state = train.load(str(tmp_path / "run"))
  expected = enc.apply({"params": state.target}, normalise(images, config.data.mean, config.data.std))
  got = np.load(tmp_path / "f.npy")
  assert got.shape == (6, 64, 32) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.save(tmp_path / "bad.npy", images[:, :8])
  bad = subprocess.run(base[:-1] + [f"--images={tmp_path / 'bad.npy'}", f"--out={tmp_path / 'g.npy'}"],
                       cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and "resize the images to 16 px" in bad.stderr and "Traceback" not in bad.stderr


def _blobs(rng, n, dim=20, classes=5, spread=3.0):
  centers = rng.normal(size=(classes, dim)) * spread
  y = rng.integers(0, classes, n)
  return centers[y] + rng.normal(size=(n, dim)), y


def test_knn_finds_neighbours_and_not_noise():
  from ijepa_jax.evaluation import knn
  rng = np.random.default_rng(0)
  x, y = _blobs(rng, 3000)
  assert knn.knn(x[:2000], y[:2000], x[2000:], y[2000:], chunk=256)["top1"] > 0.95
  assert knn.knn(rng.normal(size=(2000, 20)), y[:2000], rng.normal(size=(1000, 20)), y[2000:])["top1"] < 0.3
  # k=1 with the test set inside the bank: every point is its own nearest neighbour
  assert knn.knn(x[:500], y[:500], x[:500], y[:500], k=1)["top1"] == 1.0


def test_probes_compile_once_for_a_sweep_and_for_new_data():
  """The probes' programs take the data, lr and weight decay as arguments: another setting of a sweep, or
  other data of the same shapes, compiles nothing more."""
  from ijepa_jax.evaluation import knn
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(64, 5, 8)).astype(np.float32), rng.integers(0, 3, 64)
  before = attentive._epoch._cache_size(), knn._predict._cache_size()
  for lr, wd in ((1e-3, 0.0), (3e-3, 0.01)):
    model, p = attentive.fit(x, y, 3, lr, wd, epochs=2, batch_size=16, seed=0)
    attentive.accuracy(model, p, x, y)
    knn.knn(x[:, 0] * lr, y, x[:32, 1], y[:32], chunk=32)
  assert (attentive._epoch._cache_size(), knn._predict._cache_size()) == (before[0] + 1, before[1] + 1)


def test_lowshot_uses_the_same_share_of_every_class_and_three_draws():
  rng = np.random.default_rng(0)
  x, y = _blobs(rng, 6000, spread=1.0)
  r = linear.lowshot(x[:5000], y[:5000], x[5000:], y[5000:], (0.0, 1e-2), fraction=0.01)
  assert r["examples"] == sum(round(0.01 * np.sum(y[:5000] == c)) for c in range(5)) and len(r["draws"]) == 3
  assert r["std"] > 0 and r["top1"] == np.mean(r["draws"])
  full = linear.probe(x[:5000], y[:5000], x[5000:], y[5000:], (0.0, 1e-2))
  assert 0.3 < r["top1"] < full["top1"]            # 50 labels learn something, 5000 learn more


def test_initial_encoder_params_are_the_runs_step_0():
  from ijepa_jax import state, train
  from ijepa_jax.masks import MultiBlockSampler
  c = tiny_config()
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  sampler = MultiBlockSampler.from_config(c.mask, 8)
  encoder, _, init, _ = train.build(c, mesh, sampler, 12, 3)
  jax.tree.map(np.testing.assert_array_equal, state.initial_encoder_params(c, encoder), init().params["encoder"])


def test_evaluate_cli_writes_the_table_with_its_floors(tmp_path):
  import json
  import subprocess
  import sys
  from conftest import REPO
  from ijepa_jax import train
  train.train_and_evaluate(tiny_config(total_steps=2, **{"model.depth": 4}), str(tmp_path))
  cmd = [sys.executable, "-m", "ijepa_jax.evaluate", f"--checkpoint={tmp_path}", "--config=configs/fashion_mnist.py",
         "--config.probe.max_train=1000", "--config.probe.max_test=2000",
         "--config.probe.weight_decays=(0.0,0.01)"]  # no --eval: probe.evals
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr[:3000]  # no absl INFO lines (Orbax's)
  result = json.load(open(tmp_path / "eval.json"))
  assert result["step"] == 2 and result["train_examples"] == 1000 and result["test_examples"] == 2000
  rows = result["table"]
  assert set(rows) == {"I-JEPA target encoder, last layer", "I-JEPA target encoder, last 4 layers",
                       "same encoder at random init, last layer", "same encoder at random init, last 4 layers",
                       "raw pixels"}
  for row in rows.values():
    assert set(row) == {"linear", "lowshot", "knn"} and all(0.1 < r["top1"] <= 1 for r in row.values())
  assert result["raw_pixels_top1"] > 0.7 and result["knn_top1"] == rows["I-JEPA target encoder, last layer"]["knn"]["top1"]
  table = open(tmp_path / "eval.md").read()
  assert "| raw pixels |" in table and "k-NN (k=20)" in table and "1% labels (3 draws)" in table
  assert table in proc.stdout
  # Each result is printed as soon as it is ready (the probes take minutes on the demo's 60k images).
  assert "Probes (linear, lowshot, knn) on 1000 train / 2000 test images" in proc.stdout
  knn_line = f"  knn       raw pixels: {100 * rows['raw pixels']['knn']['top1']:.2f} ("
  assert knn_line in proc.stdout and proc.stdout.index(knn_line) < proc.stdout.index(table)
  # Shards of trained / init / raw-pixel features, train and test split each.
  assert sorted(os.listdir(tmp_path / "eval_cache" / "2")) == ["init", "pixels_28", "trained"]
  assert all(sorted(os.listdir(tmp_path / "eval_cache" / "2" / f)) == ["test", "train"]
             for f in ("init", "pixels_28", "trained"))
  bad = subprocess.run(cmd[:4] + ["--eval=linear,svm"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "unknown evaluation(s) ['svm']" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_cli_attentive_probe_on_tokens_and_pixel_patches(tmp_path):
  import json
  import subprocess
  import sys
  from conftest import REPO
  from ijepa_jax import train
  train.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
  cmd = [sys.executable, "-m", "ijepa_jax.evaluate", f"--checkpoint={tmp_path}", "--config=configs/fashion_mnist.py",
         "--config.probe.max_train=1000", "--config.probe.max_test=2000", "--config.probe.attentive_lrs=(0.003,)",
         "--config.probe.attentive_weight_decays=(0.01,)", "--config.probe.attentive_epochs=20", "--eval=attentive,knn"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr[:3000]  # no absl INFO lines (Orbax's)
  result = json.load(open(tmp_path / "eval.json"))
  rows = result["table"]
  assert set(rows["I-JEPA target encoder, last layer"]) == {"attentive", "knn"}
  assert set(rows["same encoder at random init, last layer"]) == {"attentive", "knn"}
  assert set(rows["raw pixels"]) == {"knn"}                               # pixels: no positions, no attentive
  assert 0.3 < result["attentive_top1"] <= 1                             # chance is 0.1
  table = open(tmp_path / "eval.md").read()
  assert "| k-NN (k=20) | attentive |" in table and "| – |" in table     # no tokens, no attentive cell
  cached = os.listdir(tmp_path / "eval_cache" / "2")
  assert sum("tokens" in f for f in cached) == 4                          # trained/init x train/test tokens
  assert np.load(tmp_path / "eval_cache" / "2" / [f for f in cached if "trained_tokens_test" in f][0]).shape == (
      2000, 64, 32)


def test_knn_monitor_is_logged_during_training(tmp_path):
  import json
  from ijepa_jax import train
  c = tiny_config(total_steps=4, **{"probe.monitor_every": 2, "probe.monitor_train": 200, "probe.monitor_test": 100})
  train.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  monitored = [r["step"] for r in rows if "knn_monitor" in r]
  assert monitored == [2, 4] and all(0.2 < r["knn_monitor"] <= 1 for r in rows if "knn_monitor" in r)


def test_streamed_and_in_memory_probes_agree_on_the_demos_data(tmp_path):
  """The two paths behind one entry point, on Fashion-MNIST's raw pixels (20,000 train / 10,000 test): the
  streamed probes (LARS over minibatches from the shards; k-NN merged shard by shard) against the full-batch
  ones (L-BFGS; k-NN over the whole bank)."""
  from conftest import load_file
  from ijepa_jax.evaluation import probes
  c = load_file("configs/fashion_mnist.py").get_config()
  c.probe.max_train, c.probe.shard_size, c.probe.random_init_baseline = 20000, 4096, False
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1), jax.devices())
  sets = probes.extract_features(c, None, None, None, mesh, str(tmp_path))
  assert list(sets) == [probes.PIXELS]
  results = {}
  for gib in (0.0, 100.0):
    c.probe.in_memory_gib = gib
    results[gib] = probes.probes(sets, ("linear", "knn"), c.probe, 0, mesh)[probes.PIXELS]
  streamed, in_memory = results[0.0], results[100.0]
  assert streamed["linear"]["path"] == "streamed" and in_memory["linear"]["path"] == "in memory"
  # The demo's run-to-run spread on the linear probe is ~0.3 points (experiments/README.md).
  assert abs(streamed["linear"]["top1"] - in_memory["linear"]["top1"]) <= 0.005, (streamed, in_memory)
  assert abs(streamed["knn"]["top1"] - in_memory["knn"]["top1"]) <= 1e-4
  assert in_memory["linear"]["top1"] > 0.8


def test_feature_shards_resume_refuse_others_and_feed_the_low_shot_list(tmp_path):
  """shards.write: every example once, in shards of a seeded permutation; an existing folder is resumed (finished
  shards kept), one written for something else is refused; the low-shot probe on a list of file names trains on
  exactly those files."""
  from ijepa_jax.errors import ConfigError
  from ijepa_jax.evaluation import probes, shards
  rng = np.random.default_rng(0)
  x, y = _blobs(rng, 700, dim=4, spread=4.0)
  pixels = np.clip(x * 10 + 128, 0, 255).astype(np.uint8)
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1), jax.devices())

  def make_batches(idx, batch, base=0):
    return ({"images": pixels[base + idx[i:i + batch]], "labels": y[base + idx[i:i + batch]]}
            for i in range(0, len(idx), batch))

  def write(directory, n, base=0, identity=None):
    return shards.write(str(directory), n, lambda idx, b: make_batches(idx, b, base), (4,),
                        jax.jit(lambda v: v.astype(jnp.float32)), mesh, 64, 128, 0, identity or {"split": "x"})

  write(tmp_path / "train", 600)
  write(tmp_path / "test", 100, base=600)
  train, test = shards.Shards(str(tmp_path / "train")), shards.Shards(str(tmp_path / "test"))
  assert train.num_shards == 5 and train.examples == 600
  feats, labels, index = train.arrays()
  np.testing.assert_array_equal(train.labels()[1], index)
  assert train.width == 4 and [train.count(i) for i in range(5)] == [128, 128, 128, 128, 88]
  assert sorted(index) == list(range(600)) and list(index[:5]) != [0, 1, 2, 3, 4]   # all once, shuffled
  np.testing.assert_array_equal(feats, pixels[index].astype(np.float32))
  np.testing.assert_array_equal(labels, y[index])
  os.remove(tmp_path / "train" / shards.shard_name(3))
  before = os.stat(tmp_path / "train" / shards.shard_name(0)).st_mtime_ns
  write(tmp_path / "train", 600)                                       # only shard 3 again
  assert os.stat(tmp_path / "train" / shards.shard_name(0)).st_mtime_ns == before
  assert (tmp_path / "train" / shards.shard_name(3)).exists()
  with pytest.raises(ConfigError, match="holds features of something else"):
    write(tmp_path / "train", 600, identity={"split": "y"})

  names = [f"img_{i:04d}.png" for i in range(600)]
  chosen = names[::20]                                                 # 30 files
  (tmp_path / "list.txt").write_text("\n".join(chosen) + "\n")
  pc = ml_collections.ConfigDict(dict(lowshot_list=str(tmp_path / "list.txt"), weight_decays=(0.01,),
                                      standardise=True, lowshot_fraction=0.01, lowshot_seeds=(0, 1)))
  r = probes.lowshot(train, test, pc, names)
  assert r["examples"] == 30 and r["draws"] == [r["top1"]] and r["top1"] > 0.8
  (tmp_path / "list.txt").write_text("\n".join(chosen + ["missing.png"]) + "\n")
  with pytest.raises(ConfigError, match="1 of the 31 files"):
    probes.lowshot(train, test, pc, names)
