"""experiments/eval_checkpoint.ipynb executed headless on a checkpoint written on a 2-device mesh."""
import os
import subprocess
import sys

import nbformat
from nbclient import NotebookClient

from conftest import REPO
from test_cli import TINY


def test_eval_notebook_runs_on_a_checkpoint_from_another_mesh(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "ijepa_jax.main", "--config=configs/fashion_mnist.py",
                         f"--workdir={workdir}", *TINY, "--config.model.depth=4", "--config.mesh.data=2",
                         "--config.write_plots=True", "--config.probe.evals=('linear','knn')"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("training_curves.png", "mask_examples.png", "probe_results.png", "eval.md"):
    assert os.path.getsize(workdir / name) > (300 if name.endswith(".md") else 5000), name

  monkeypatch.setenv("IJEPA_CHECKPOINT", str(workdir))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", REPO)    # the kernel runs in experiments/, whether or not the package is installed
  path = os.path.join(REPO, "experiments", "eval_checkpoint.ipynb")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "step 4; 4 blocks of width 32; parameters on 1 device(s)" in text
  assert "k-NN top-1 on this small subset" in text and "| raw pixels |" in text
  images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert images == 4                        # neighbours, PCA, masks, probe results
