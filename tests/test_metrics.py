"""Tests of ijepa_jax.metrics: when the trainer says the input is the bottleneck; the event writer's imports."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ijepa_jax.metrics import InputBoundWarning  # pylint: disable=g-import-not-at-top


def _said(fractions, **kw):
  w = InputBoundWarning(num_workers=4, **kw)
  return [w.update(f) for f in fractions]


def test_warns_once_after_consecutive_high_intervals():
  said = _said([0.9, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9])
  assert said[:3] == [None, None, None]  # the first interval (start-up) does not count; then 2 high ones
  assert said[3] is not None and all(s is None for s in said[4:])  # the third high one: once per run
  assert "--config.data.num_workers" in said[3] and "now 4" in said[3] and "50-70%" in said[3]


def test_needs_them_consecutive_and_above_the_threshold():
  assert _said([0.0, 0.5, 0.5, 0.1, 0.5, 0.5, 0.3, 0.5]) == [None] * 8  # 0.3 is not above 0.3
  assert _said([0.0] + [0.2] * 20) == [None] * 21
  assert _said([0.0, 0.4, 0.4], intervals=2, threshold=0.35)[2] is not None


def test_the_event_writer_is_imported_without_torch(tmp_path):
  """tensorboardX imports torch when installed (~1.5 s at each run's start); the trainer's writer does not."""
  import subprocess
  code = ("import sys; from ijepa_jax import metrics; w = metrics.MetricWriter(sys.argv[1], 2); "
          "w.write(1, {'loss': 0.5}); w.close(); print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["False"]
  assert any(f.startswith("events.out.tfevents") and os.path.getsize(tmp_path / "tensorboard" / f) > 0
             for f in os.listdir(tmp_path / "tensorboard"))
