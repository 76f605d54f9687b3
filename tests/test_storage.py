"""gs:// paths end to end against a Cloud Storage emulator on loopback (the `gcs` fixture): the files a
run writes, training, resume, evaluation and extraction from a bucket, ImageFolder data in a bucket,
and the answers to a missing bucket and to missing credentials."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from etils import epath
from PIL import Image

from conftest import REPO
from test_cli import TINY


def _cli(module, *args, env=None, timeout=600):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                        timeout=timeout, env=env)


def test_files_on_gcs(gcs):
  from ijepa_jax import storage
  root = gcs("files")
  log = storage.AppendFile(f"{root}/metrics.jsonl", min_interval_s=3600)
  log.write("a\n")
  assert not epath.Path(f"{root}/metrics.jsonl").exists()    # not uploaded until flush (interval not reached)
  log.flush()
  log.write("b\n")
  log.close()
  assert epath.Path(f"{root}/metrics.jsonl").read_text() == "a\nb\n"
  again = storage.AppendFile(f"{root}/metrics.jsonl")         # a resumed run appends to what is there
  again.write("c\n")
  again.close()
  assert epath.Path(f"{root}/metrics.jsonl").read_text() == "a\nb\nc\n"

  storage.write_text(f"{root}/config.json", "{}")
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  storage.save_npy(f"{root}/deep/x.npy", x)
  np.testing.assert_array_equal(storage.load_npy(f"{root}/deep/x.npy"), x)
  for rel in ("b/2.txt", "b/1.txt", "a/z/3.txt"):
    storage.write_text(f"{root}/tree/{rel}", rel)
  assert list(storage.walk_files(f"{root}/tree")) == [(".", []), ("a", []), ("a/z", ["3.txt"]),
                                                      ("b", ["1.txt", "2.txt"])]


def test_a_reader_sees_checkpoints_another_process_writes_later(gcs):
  """A reader polling a live gs:// run (a notebook) lists the checkpoints folder again and again: each listing
  shows what another process finished since (gcsfs would otherwise keep the first listing for good)."""
  from ijepa_jax import checkpoint, storage
  root = gcs("live")
  folder = storage.path(root) / "checkpoints"

  def finish(step):   # written by another process, as the training run would
    code = (f"from ijepa_jax import storage; d = storage.path({root!r}) / 'checkpoints' / '{step}'; "
            "d.mkdir(parents=True, exist_ok=True); (d / 'commit_success.txt').write_text('done')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)

  finish(3)
  assert checkpoint.finished_steps(folder) == [3]
  finish(6)
  assert checkpoint.finished_steps(folder) == [3, 6]


def test_image_folder_in_a_bucket(gcs, tmp_path):
  """The same listing, labels and decoded pixels from gs:// as from the local copy."""
  from ijepa_jax import storage
  from ijepa_jax.data.encoded import ImageFolder
  root = gcs("imagenet")
  rng = np.random.default_rng(0)
  for cls in ("n01", "n02"):
    for i in range(3):
      rel = f"train/{cls}/{'sub/' if i == 2 else ''}img{i}.png"
      (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(tmp_path / rel)
      storage.path(f"{root}/{rel}").write_bytes((tmp_path / rel).read_bytes())
  local, remote = ImageFolder(str(tmp_path), "train"), ImageFolder(root, "train")
  assert len(remote) == len(local) == 6 and remote.classes == local.classes == ["n01", "n02"]
  assert [remote.path(i).split("/train/")[1] for i in range(6)] == [local.path(i).split("/train/")[1]
                                                                   for i in range(6)]
  for i in range(6):
    a, b = local[i], remote[i]
    assert a["label"] == b["label"]
    np.testing.assert_array_equal(a["image"], b["image"])


def test_train_evaluate_extract_on_gcs(gcs, tmp_path):
  """The demo's CLI with --workdir=gs://: checkpoints, metrics, TensorBoard, config, eval and plots land
  in the bucket; a second invocation resumes from it; evaluate, extract and train.load read from it."""
  workdir = gcs("run")
  args = ["--config=configs/fashion_mnist.py", f"--workdir={workdir}", *TINY, "--config.write_plots=True"]
  first = _cli("ijepa_jax.main", *args, "--config.run_steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  second = _cli("ijepa_jax.main", *args)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints/2 (step 2)" in second.stdout
  w = epath.Path(workdir)
  assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["2", "4"]
  assert [json.loads(r)["step"] for r in (w / "metrics.jsonl").read_text().splitlines()] == [2, 4]
  assert any(p.name.startswith("events.out.tfevents") for p in (w / "tensorboard").iterdir())
  assert json.loads((w / "config.json").read_text())["model"]["patch_size"] == 2
  assert 0.1 < json.loads((w / "eval.json").read_text())["linear_top1"] <= 1.0
  assert {"eval.md", "training_curves.png", "probe_results.png"} <= {p.name for p in w.iterdir()}
  shards = w / "eval_cache" / "4" / "trained" / "train"                   # the feature shards, in the bucket
  assert (shards / "manifest.json").exists() and (shards / "shard_00000.npz").exists()

  ev = _cli("ijepa_jax.evaluate", f"--checkpoint={workdir}", "--eval=knn")
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "k-NN (k=" in ev.stdout and "k-NN (k=" in epath.Path(f"{workdir}/eval.md").read_text()

  from ijepa_jax import storage, train
  images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
  storage.save_npy(f"{workdir}/x.npy", images)
  ex = _cli("ijepa_jax.extract", f"--checkpoint={workdir}", f"--images={workdir}/x.npy",
            f"--out={workdir}/features.npy")
  assert ex.returncode == 0, ex.stderr[-3000:]
  features = storage.load_npy(f"{workdir}/features.npy")
  assert features.shape == (5, 32) and np.isfinite(features).all()

  config, encoder, state = train.load(workdir)                # the notebook's loader
  assert int(state.step) == 4
  from ijepa_jax.evaluation import features as feats
  import jax
  from ijepa_jax import sharding
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  ours = feats.extract(encoder, state.target, images, config.data.mean, config.data.std, 8, mesh)
  np.testing.assert_allclose(ours, features, rtol=1e-5, atol=1e-6)


def _one_error_line(proc) -> str:
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


def test_missing_bucket_is_one_clear_line(gcs):
  line = _one_error_line(_cli("ijepa_jax.main", "--config=configs/fashion_mnist.py",
                              "--workdir=gs://no-such-bucket/run", *TINY))
  assert "bucket gs://no-such-bucket does not exist" in line and "gcloud storage buckets create" in line


def test_no_credentials_is_one_clear_line(gcs, tmp_path):
  """Real Cloud Storage (no emulator) without credentials: google.auth finds none before any request."""
  env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
  env.update(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-key.json"), NO_GCE_CHECK="True",
             HOME=str(tmp_path))
  line = _one_error_line(_cli("ijepa_jax.main", "--config=configs/fashion_mnist.py",
                              "--workdir=gs://some-bucket/run", *TINY, env=env, timeout=120))
  assert "no Google Cloud credentials" in line and "gcloud auth application-default login" in line
  line = _one_error_line(_cli("ijepa_jax.extract", "--checkpoint=gs://some-bucket/run",
                              "--images=gs://some-bucket/x.npy", "--out=/tmp/f.npy", env=env, timeout=120))
  assert "no Google Cloud credentials" in line


def test_fashion_mnist_and_tfds_data_dir_in_a_bucket(gcs):
  """The IDX files read from gs:// equal the local ones; a TFDS data_dir in a bucket reaches
  tfds.data_source (which reads the bucket itself), and a missing bucket is named before it."""
  from ijepa_jax import storage
  from ijepa_jax.data import sources
  from ijepa_jax.errors import ConfigError
  from test_data import FMNIST, make_config
  root = gcs("fmnist")
  for name in sources._FASHION_FILES["test"]:
    storage.path(f"{root}/{name}").write_bytes(storage.path(f"{FMNIST}/{name}").read_bytes())
  images, labels = sources.load_fashion_mnist(root, "test")
  local_images, local_labels = sources.load_fashion_mnist(FMNIST, "test")
  np.testing.assert_array_equal(images, local_images)
  np.testing.assert_array_equal(labels, local_labels)
  with pytest.raises(ConfigError, match="bucket gs://no-such-bucket does not exist"):
    sources.load_fashion_mnist("gs://no-such-bucket/fmnist", "test")

  with pytest.raises(ConfigError, match="bucket gs://no-such-bucket does not exist.*tfds_data_dir"):
    sources.make_source(make_config("tfds", tfds_name="imagenet2012", tfds_data_dir="gs://no-such-bucket/tfds"),
                        "train")
  with pytest.raises(ConfigError, match=r"cannot open TFDS dataset 'imagenet2012'.*data_dir=gs://"):
    sources.make_source(make_config("tfds", tfds_name="imagenet2012", tfds_data_dir=f"{root}/tfds"), "train")
