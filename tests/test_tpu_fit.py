"""experiments/tpu_fit.py: a failed compile's row names the exception, not the notes printed after it;
the largest-batch search ends where it should."""
import pytest
from conftest import load_file


@pytest.fixture(scope="module")
def tpu_fit():
  return load_file("experiments/tpu_fit.py")   # once: its absl flags can be defined only once


def test_error_rows_name_the_exception(tpu_fit):
  stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "jax._src.sharding.IndivisibleError: Sharding NamedSharding(spec=P(None, 'fsdp')) implies that array "
            "axis 1 is partitioned 256 times, but the dimension size is 384\n--------------------\n"
            "For simplicity, JAX has removed its internal frames from the traceback of the following exception. "
            "Set JAX_TRACEBACK_FILTERING=off to include these.\n")
  line = tpu_fit.error_line(stderr)
  assert line.startswith("jax._src.sharding.IndivisibleError: ") and "dimension size is 384" in line
  assert tpu_fit.error_line("a | b\nno exception here\n") == "no exception here"   # else the last line
  assert "|" not in tpu_fit.error_line("ValueError: a | b")                          # a table cell stays one


@pytest.mark.parametrize("capacity", [5, 37, 70, 130, 1000])
def test_search_largest_finds_the_last_batch_that_fits_within_a_step(tpu_fit, capacity):
  """A fake compiler whose peak grows linearly to the HBM at `capacity` images, except for a jump
  the linear guess cannot see (30% more past 60 images, where the capacity is larger): the search
  ends on a batch that fits, about a step below one that does not, whichever side of the guess the
  answer lies, in a dozen compiles at most."""
  hbm, compiled = 100.0, []

  def peak(p):
    return 2 + 98 * p / capacity * (1.3 if p > 60 and capacity > 60 else 1.0)

  def measure(p):
    compiled.append(p)
    return {"fits": peak(p) <= hbm, "peak": peak(p)}

  rows = {}
  found = tpu_fit.search_largest(measure, 8, hbm, rows)
  if capacity < 8:
    assert found is None and compiled == [8, 32]
    return
  largest = max(p for p in range(1, 10 * capacity) if peak(p) <= hbm)   # 70 -> 53, 1000 -> 769
  assert found in compiled and peak(found) <= hbm
  assert 0 <= largest - found <= max(1, largest // 12), (found, largest, compiled)
  assert len(compiled) == len(set(compiled)) <= 12, compiled          # each batch compiled once
  assert sorted(rows) == sorted(compiled)
  # resumed from its own rows it compiles nothing more; from a part of them, the rest and no others
  again = []
  assert tpu_fit.search_largest(again.append, 8, hbm, dict(rows)) == found and again == []
  part = {p: rows[p] for p in compiled[:3]}
  assert tpu_fit.search_largest(measure, 8, hbm, part) == found and len(compiled) <= 2 * len(rows) - 3
