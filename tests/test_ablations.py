"""experiments/ablations.py: variants trained and probed end to end on a tiny config, the table lists every
variant beside the paper's numbers, a second invocation reruns nothing, and the ordering sentence."""
import json
import os
import subprocess
import sys

from conftest import REPO, TINY_CLI, load_file

TINY = TINY_CLI + ["probe.evals=('lowshot',)", "probe.monitor_every=0", "probe.random_init_baseline=False",
                   "probe.raw_pixels_baseline=False"]
SCRIPT = os.path.join(REPO, "experiments", "ablations.py")


def _run(tmp_path):
  return subprocess.run([sys.executable, SCRIPT, f"--root={tmp_path}/runs", f"--out={tmp_path}/out", "--steps=2",
                         "--variants=rasterized,pixels", *(f"--set={kv}" for kv in TINY)], capture_output=True, text=True, cwd=REPO, timeout=600)



def test_two_variants_run_once_and_every_variant_is_tabled(tmp_path):
  """Two variants end to end (~30 s each: start, compile, probes); the others are listed as not run."""
  ablations = load_file("experiments/ablations.py")
  proc = _run(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name, section, key, value in (("rasterized", "mask", "strategy", "rasterized"), ("pixels", None, "target", "pixels")):
    config = json.load(open(tmp_path / "runs" / name / "config.json"))
    assert (config[section] if section else config)[key] == value
    assert "lowshot_top1" in json.load(open(tmp_path / "runs" / name / "eval.json"))
  other = json.load(open(tmp_path / "runs" / "pixels" / "config.json"))
  assert other["mask"]["strategy"] == "multiblock"
  table = (tmp_path / "out" / "ablations.md").read_text()
  rows = {r.split("|")[1].strip(): r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| variant")}
  assert list(rows) == list(ablations.VARIANTS)
  assert ("not run" in rows["multiblock"]) and all("not run" not in rows[n] for n in ("rasterized", "pixels"))
  assert (tmp_path / "out" / "ablations.png").stat().st_size > 1000
  assert (tmp_path / "out" / "ablation_masks.png").stat().st_size > 1000
  again = _run(tmp_path)   # resumable: both have their eval.json, nothing is trained again
  assert again.returncode == 0 and again.stdout.count("done already") == 2


def _fake_runs(root, top1):
  for name, value in top1.items():
    os.makedirs(root / name)
    (root / name / "eval.json").write_text(json.dumps(
        {"step": 3000, "lowshot_top1": value, "linear_top1": value + 0.1, "knn_top1": value}))


def test_the_report_says_whether_the_papers_ordering_holds(tmp_path):
  ablations = load_file("experiments/ablations.py")
  paper_like = {"multiblock": 0.7, "rasterized": 0.4, "block": 0.6, "random": 0.5, "pixels": 0.65}
  _fake_runs(tmp_path / "a", paper_like)
  text = open(ablations.write_report(str(tmp_path / "a"), str(tmp_path / "outa"), list(ablations.VARIANTS), -1, [])).read()
  assert "ordering hold here?** Yes." in text and "| block | mask.strategy=block | 20.2 (Table 6) | 60.00 | 70.00 |" in text
  swapped = dict(paper_like, rasterized=0.8, pixels=0.75)     # rasterized best, pixels above representations
  _fake_runs(tmp_path / "b", swapped)
  text = open(ablations.write_report(str(tmp_path / "b"), str(tmp_path / "outb"), list(ablations.VARIANTS), -1, [])).read()
  assert "ordering hold here?** No." in text and "multi-block is not the best here" in text
  assert "not below: the paper's ordering does not hold here" in text


def test_the_report_says_how_well_the_ranking_is_resolved(tmp_path):
  ablations = load_file("experiments/ablations.py")
  top1 = {"multiblock": 0.72, "rasterized": 0.70, "block": 0.715, "random": 0.705}
  for name, value in top1.items():
    os.makedirs(tmp_path / name)
    (tmp_path / name / "eval.json").write_text(json.dumps({
        "step": 3000, "lowshot_top1": value, "linear_top1": value, "knn_top1": 1 - value,
        "table": {ablations.LAST: {"lowshot": {"top1": value, "std": 0.003, "draws": [0, 0, 0]}}}}))
  text = open(ablations.write_report(str(tmp_path), str(tmp_path / "out"), list(ablations.VARIANTS), -1, [])).read()
  # 2 standard errors of a difference: 2 * hypot(0.3, 0.3) / sqrt(3) = 0.49 points
  assert "multiblock - block 0.50 (resolved: 2 s.e. 0.49)" in text
  assert "block - random 1.00 (resolved" in text and "random - rasterized 0.50 (resolved" in text
  assert "first to last, multiblock - rasterized 2.00 (resolved" in text and "places are within" not in text
  assert "linear: multiblock > block > random > rasterized (the paper's)" in text
  assert "k-NN: rasterized > random > block > multiblock." in text
