"""plots.training_curves: a panel per logged curve, the k-NN monitor's included where it ran."""
import struct

from ijepa_jax import plots


def _png_width(path) -> int:
  with open(path, "rb") as f:
    return struct.unpack(">I", f.read(24)[16:20])[0]   # IHDR: width after the 8-byte signature and chunk header


def test_training_curves_show_the_knn_monitor_where_it_ran(tmp_path):
  rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "wd": 0.04, "momentum": 0.996} for s in range(1, 7)]
  without = _png_width(plots.training_curves(rows, str(tmp_path / "a.png")))
  for r in rows[1::2]:                                  # the monitor logs on some steps only
    r["knn_monitor"] = 0.1 * r["step"]
  with_monitor = _png_width(plots.training_curves(rows, str(tmp_path / "b.png")))
  assert (without, with_monitor) == (1600, 2000)        # 4 panels of 4 inches at 100 dpi, then 5
