"""experiments/long_run.py: trained in segments, each segment's checkpoint probed into its own directory
(the run's eval.json is the trainer's final table), the levels measured once, the report and plot, and a
second invocation redoes nothing."""
import json
import os
import subprocess
import sys

from conftest import REPO, TINY_CLI, load_file

TINY = TINY_CLI + ["probe.evals=('lowshot','knn')", "probe.monitor_every=2", "probe.monitor_train=200",
                   "probe.monitor_test=100"]
SCRIPT = os.path.join(REPO, "experiments", "long_run.py")


def _run(tmp_path):
  return subprocess.run([sys.executable, SCRIPT, f"--root={tmp_path}/root", f"--out={tmp_path}/out", "--steps=4",
                         "--probe_every=2", *(f"--set={kv}" for kv in TINY)],
                        capture_output=True, text=True, cwd=REPO, timeout=600)


def test_segments_probes_report_and_resume(tmp_path):
  proc = _run(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  root = tmp_path / "root"
  config = json.load(open(root / "run" / "config.json"))
  assert config["total_steps"] == 4 and config["model"]["width"] == 32
  middle = json.load(open(root / "probes" / "2" / "eval.json"))
  final = json.load(open(root / "run" / "eval.json"))
  assert middle["step"] == 2 and final["step"] == 4
  assert "raw pixels" in middle["table"] and "same encoder at random init, last layer" in middle["table"]
  assert (root / "probes" / "2" / "eval_cache" / "2").is_dir()   # --out holds the features it computed
  segments = [json.loads(line) for line in open(root / "segments.jsonl")]
  assert [(s["what"], s["from_step"], s["to_step"]) for s in segments] == [
      ("train", 0, 2), ("probe", 2, 2), ("train + final probes", 2, 4)]
  metrics = [json.loads(line) for line in open(root / "run" / "metrics.jsonl")]
  assert [r["step"] for r in metrics if "knn_monitor" in r] == [2, 4]
  report = (tmp_path / "out" / "long_run.md").read_text()
  rows = {r.split("|")[1].strip(): r for r in report.splitlines() if r.startswith("| ")}
  lowshot = lambda r: 100 * r["table"]["I-JEPA target encoder, last layer"]["lowshot"]["top1"]
  assert f"| {lowshot(middle):.2f} |" in rows["2"] and f"| {lowshot(final):.2f} |" in rows["4"]
  assert f"{100 * final['table']['raw pixels']['knn']['top1']:.2f}" in rows["raw pixels"]
  assert "random init" in rows and "**Past raw pixels?**" in report and "not finished" not in report
  assert "`python experiments/long_run.py --steps=4 --probe_every=2`" in report
  pixels_on_monitor = load_file("experiments/long_run.py").monitor_pixel_level(str(root / "run"))
  assert 0.1 < pixels_on_monitor <= 1 and f"| {100 * pixels_on_monitor:.2f} |" in rows["raw pixels"]
  assert f"- k-NN monitor (raw pixels on the monitor's images {100 * pixels_on_monitor:.2f}): " in report
  assert (tmp_path / "out" / "long_run.png").stat().st_size > 1000
  again = _run(tmp_path)   # resumable: everything is there, nothing is trained or probed again
  assert again.returncode == 0 and "[train" not in again.stdout and "[probe" not in again.stdout
  assert len(open(root / "segments.jsonl").readlines()) == 3


def test_a_stop_reaches_the_trainer_which_checkpoints_and_is_logged(tmp_path):
  import signal
  import time
  root = tmp_path / "root"
  proc = subprocess.Popen([sys.executable, SCRIPT, f"--root={root}", f"--out={tmp_path}/out", "--steps=100000",
                           "--probe_every=50000", *(f"--set={kv}" for kv in TINY)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
  metrics, deadline = root / "run" / "metrics.jsonl", time.time() + 300
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):   # training has begun
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)   # to this script only: it passes the stop on and waits
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 1 and "Stopped by SIGTERM during 'train' (from step 0)" in err, err[-3000:]
  assert "Stopped by SIGTERM at step" in out   # the trainer's own line: it stopped, checkpointed, exited
  long_run = load_file("experiments/long_run.py")
  steps = long_run.checkpoint_steps(str(root / "run"))
  assert steps and 0 < steps[-1] < 100000
  segments = [json.loads(line) for line in open(root / "segments.jsonl")]
  assert [(s["what"], s["from_step"]) for s in segments] == [("train (stopped)", 0)]



def test_report_of_an_unfinished_run_says_when_pixels_are_passed(tmp_path):
  long_run = load_file("experiments/long_run.py")

  def result(step, knn, pixels=None):
    table = {"I-JEPA target encoder, last layer": {"knn": {"top1": knn}, "lowshot": {"top1": knn - 0.1}}}
    if pixels is not None:
      table["raw pixels"] = {"knn": {"top1": pixels}, "lowshot": {"top1": pixels}}
      table["same encoder at random init, last layer"] = {"knn": {"top1": 0.5}, "lowshot": {"top1": 0.4}}
    return {"step": step, "table": table}

  for step, r in ((3000, result(3000, 0.80, pixels=0.846)), (6000, result(6000, 0.85)), (9000, result(9000, 0.86))):
    os.makedirs(tmp_path / "probes" / str(step))
    (tmp_path / "probes" / str(step) / "eval.json").write_text(json.dumps(r))
  text = open(long_run.write_report(str(tmp_path), str(tmp_path / "out"), 30000)).read()
  assert "- k-NN (pixels 84.60): first above at step 6000 (epoch 6.4)." in text
  assert "- 1% labels (pixels 84.60): not yet; the best so far is 76.00." in text
  assert "The run is not finished" in text and "| 9000 | 9.6 |" in text
