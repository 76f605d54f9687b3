"""experiments/release_parity.py: parity with the PyTorch release when a checkout is at hand
(IJEPA_RELEASE=/path/to/ijepa), and a clean skip when it is not."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, "experiments", "release_parity.py")


def _run(*args, timeout):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_missing_release_checkout_skips_cleanly(tmp_path):
  # Checked before torch or jax is imported: this must stay fast.
  proc = _run(f"--release={tmp_path / 'no_such_checkout'}", timeout=60)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1 and "skipping" in lines[0] and "no_such_checkout" in lines[0], proc.stdout


def test_release_parity(tmp_path):
  release = os.environ.get("IJEPA_RELEASE")
  if not release:
    pytest.skip("IJEPA_RELEASE is not set (point it at a facebookresearch/ijepa checkout to run this)")
  # Set but wrong is a mistake to report, not a reason to skip; torch is part of the test extras.
  assert os.path.isdir(os.path.join(release, "src", "models")), f"IJEPA_RELEASE={release} is not an ijepa checkout"
  out = tmp_path / "release_parity.md"
  proc = _run(f"--release={release}", f"--out={out}", timeout=900)
  print(proc.stdout)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "FAIL" not in proc.stdout
  text = out.read_text()
  assert "result: all pass" in text and "predictor output" in text and "gradients" in text
  assert text.count("CLIs: convert --torch, then extract (target)") == 2   # one row per size
  # mask.counts='release' on the release's own MaskCollator masks: loss, both gradients, the jitted step's two metrics
  collator = [l for l in text.splitlines() if "release MaskCollator masks, 2 GPU batches" in l]
  assert len(collator) == 10 and all(l.endswith("| pass |") for l in collator), collator
  # bf16 against the release under CUDA's autocast, for both sizes, each row within the release's own bf16 error
  assert "## bf16: ours (`dtype=bfloat16`)" in text
  for size in ("tiny", "small"):
    rows = [l for l in text.splitlines() if l.startswith(f"| {size} | ")]
    assert len(rows) == 8 and all(l.endswith("| pass |") for l in rows), rows
