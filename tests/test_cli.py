"""The CLI end to end on tiny real data, and its answers to bad input."""
import json
import os
import re
import resource
import signal
import subprocess
import sys

from conftest import COMPILATION_CACHE, REPO

TINY = ["--config.batch_size=16", "--config.total_steps=4", "--config.warmup_steps=1",
        "--config.data.image_size=16", "--config.model.patch_size=2", "--config.model.width=32",
        "--config.model.depth=1", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
        "--config.model.predictor_width=16", "--config.model.predictor_depth=1",
        "--config.model.predictor_heads=2", "--config.mask.reference_batch=16",
        "--config.log_every=2", "--config.checkpoint_every=2", "--config.probe.max_train=600",
        "--config.probe.max_test=2000",
        "--config.probe.weight_decays=(0.0,0.01)", "--config.probe.monitor_every=0",
        "--config.write_plots=False", f"--config.compilation_cache={COMPILATION_CACHE}"]


def _main(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "ijepa_jax.main", *args], capture_output=True, text=True,
                        cwd=REPO, timeout=timeout)


def test_demo_config_end_to_end(tmp_path):
  proc = _main("--config=configs/fashion_mnist.py", f"--workdir={tmp_path}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 4/4" in proc.stdout and "test top-1" in proc.stdout
  assert "mesh {'data': 2, 'fsdp': 1}" in proc.stdout   # the config's cpu_devices=2: two CPU devices
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4]
  assert {"step", "loss", "lr", "wd", "momentum", "images_per_sec"} <= set(rows[0])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  assert json.load(open(tmp_path / "config.json"))["model"]["patch_size"] == 2
  result = json.load(open(tmp_path / "eval.json"))
  assert 0.1 < result["linear_top1"] <= 1.0 and 0.1 < result["raw_pixels_top1"] <= 1.0


def test_missing_imagenet_is_one_clear_line(tmp_path):
  proc = _main("--config=configs/vit_h14.py", f"--workdir={tmp_path}",
               f"--config.data.path={tmp_path}/no_imagenet_here")
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "--config.data.path" in errors[0] and "no_imagenet_here" in errors[0]
  assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_config_key_is_rejected(tmp_path):
  proc = _main("--config=configs/fashion_mnist.py", f"--workdir={tmp_path}", "--config.totl_steps=3")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert 'Did you mean "total_steps"' in proc.stderr
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_image_size_not_divisible_by_patch(tmp_path):
  proc = _main("--config=configs/fashion_mnist.py", f"--workdir={tmp_path}", "--config.data.image_size=30")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "--config.data.image_size" in proc.stderr


def test_unwritable_workdir_is_one_clear_line(tmp_path):
  (tmp_path / "a_file").write_text("not a directory")
  workdirs = [tmp_path / "a_file" / "run"]
  if os.geteuid() != 0:  # root writes anywhere: only the path-under-a-file case applies
    (tmp_path / "readonly").mkdir(mode=0o500)
    workdirs.append(tmp_path / "readonly" / "run")
  for workdir in workdirs:
    proc = _main("--config=configs/fashion_mnist.py", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: cannot write to --workdir={workdir}" in proc.stderr and "writable directory" in proc.stderr


def _file_size_limit(limit):
  """A stand-in for a full disk: files cannot grow past `limit` bytes (EFBIG instead of ENOSPC)."""
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


def test_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path):
  args = ["--config=configs/fashion_mnist.py", f"--workdir={tmp_path}", *TINY, "--config.total_steps=12",
          "--config.checkpoint_every=4", "--config.probe.enabled=False"]
  assert _main(*args, "--config.run_steps=4").returncode == 0
  full = subprocess.run([sys.executable, "-m", "ijepa_jax.main", *args], capture_output=True, text=True, cwd=REPO,
                        timeout=600, preexec_fn=_file_size_limit(40_000))   # Orbax metadata files are larger
  assert full.returncode == 1
  errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]  # Orbax logs its own traceback
  assert len(errors) == 1 and errors[0].startswith("error: could not write a checkpoint"), full.stderr[-3000:]
  assert "Free disk space" in errors[0]
  # Which saves fail depends on how Orbax packs arrays into files (timing), so the message must name
  # whichever checkpoint is the newest complete one, and that one must be what the re-run resumes from.
  intact = int(re.search(r"newest complete checkpoint is step (\d+)", errors[0]).group(1))
  saved = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert intact in (4, 8) and saved[-1] == intact and 4 in saved       # step 12 was never completed
  again = _main(*args)                              # space again: continues from the intact checkpoint
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"(step {intact})" in again.stdout and "Resumed from" in again.stdout and "Finished at step 12" in again.stdout


def _readme_commands() -> list[str]:
  """Every `python -m ijepa_jax.<cli> ...` command in the README's sh blocks, continuation lines joined."""
  readme = open(os.path.join(REPO, "README.md")).read()
  commands = []
  for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()   # a trailing comment is not part of the command
      if re.search(r"python3? -m ijepa_jax\.\w+", line):
        commands.append(line.rstrip("\"'"))
  return commands


def test_readme_commands_use_real_flags_and_config_keys():
  """The README cannot drift from the CLIs: each command's module exists, each --flag it passes is one that
  module defines, and each --config.KEY exists in the config file it names (a typo would be refused there)."""
  from conftest import load_file
  commands = _readme_commands()
  modules = {re.search(r"-m ijepa_jax\.(\w+)", c).group(1) for c in commands}
  assert {"main", "prepare", "memory", "extract", "evaluate", "convert"} <= modules, modules
  for command in commands:
    module = re.search(r"-m ijepa_jax\.(\w+)", command).group(1)
    source = open(os.path.join(REPO, "ijepa_jax", f"{module}.py")).read()
    defined = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    args = command.split(f"ijepa_jax.{module}", 1)[1]
    for flag in re.findall(r"(?:^|[\s\[|])--(\w+)(?=[=\s\]|]|$)", args):
      assert flag in defined, f"{command}: --{flag} is not a flag of ijepa_jax.{module} ({sorted(defined)})"
    config_file = re.search(r"--config=(configs/\w+\.py)", args)
    for key in re.findall(r"--config\.([\w.]+)=", args):
      config = load_file(config_file.group(1)).get_config()
      for part in key.split("."):
        assert part in config, f"{command}: --config.{key} is not a key of {config_file.group(1)}"
        config = config[part]
