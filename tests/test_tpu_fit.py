"""experiments/tpu_fit.py: a failed compile's row names the exception, not the notes printed after it."""
from conftest import load_file


def test_error_rows_name_the_exception():
  tpu_fit = load_file("experiments/tpu_fit.py")
  stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "jax._src.sharding.IndivisibleError: Sharding NamedSharding(spec=P(None, 'fsdp')) implies that array "
            "axis 1 is partitioned 256 times, but the dimension size is 384\n--------------------\n"
            "For simplicity, JAX has removed its internal frames from the traceback of the following exception. "
            "Set JAX_TRACEBACK_FILTERING=off to include these.\n")
  line = tpu_fit.error_line(stderr)
  assert line.startswith("jax._src.sharding.IndivisibleError: ") and "dimension size is 384" in line
  assert tpu_fit.error_line("a | b\nno exception here\n") == "no exception here"   # else the last line
  assert "|" not in tpu_fit.error_line("ValueError: a | b")                          # a table cell stays one
