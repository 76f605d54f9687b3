"""The memory report: compile-only train steps on fake CPU devices (bytes per device from the shardings)
and with the TPU compiler for named Cloud TPU slices (libtpu, no TPU)."""
import re
import subprocess
import sys

import pytest
from conftest import REPO

TINY = ["--config.data.image_size=16", "--config.model.patch_size=2", "--config.model.width=32",
        "--config.model.depth=1", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
        "--config.model.predictor_width=16", "--config.model.predictor_depth=1", "--config.model.predictor_heads=2",
        "--config.batch_size=16", "--config.mask.reference_batch=16"]

SCRIPT = """
import sys, json, jax
jax.config.update("jax_num_cpu_devices", 4)
sys.path.insert(0, "tests")
from conftest import tiny_config
from ijepa_jax import memory
out = {}
for fsdp in (1, 4):
  c = tiny_config()
  c.mesh.data, c.mesh.fsdp = 4 // fsdp, fsdp
  out[fsdp] = memory.report(c, jax.devices()[:4])
print("RESULT" + json.dumps(out))
"""


def test_fsdp_divides_the_train_state_and_the_ratio_is_per_device_over_even_share():
  import json
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  dp, fsdp = out["1"], out["4"]
  assert dp["state_total"] == fsdp["state_total"] and dp["state"] == dp["state_total"]   # replicated
  assert fsdp["state"] < 0.4 * dp["state"]                                               # split 4 ways
  assert fsdp["state_ratio"] == fsdp["state"] / (fsdp["state_total"] / 4)
  assert fsdp["params"] + fsdp["opt_state"] + fsdp["target"] == fsdp["state"] and fsdp["temp"] > 0
  assert fsdp["mesh"] == {"data": 1, "fsdp": 4} and fsdp["batch"] == 16


SAME_STEP = """
import sys, json, jax
jax.config.update("jax_num_cpu_devices", 4)
sys.path.insert(0, "tests")
from conftest import load_file
from ijepa_jax import aot
text = {name: aot.lower_step(load_file(f"configs/{name}.py").get_config(), jax.devices())["lowered"].as_text()
        for name in ("vit_h14", "vit_h14_in22k", "vit_h16_448")}
print("RESULT" + json.dumps({"in22k": text["vit_h14_in22k"] == text["vit_h14"],
                             "448": text["vit_h16_448"] == text["vit_h14"], "chars": len(text["vit_h14"])}))
"""


def test_vit_h14_in22k_compiles_to_vit_h14s_train_step():
  """The memory tables compile ViT-H/14 and stand for ViT-H/14-in22k too: its train step lowers to the
  same program (model, precision, mesh, mask shapes), given the same schedule lengths, which only set
  constants in it (the memory tool compiles every config with the same); the sampler's reference_batch
  acts on the host. ViT-H/16 at 448 px, a different step, reads differently."""
  import json
  proc = subprocess.run([sys.executable, "-c", SAME_STEP], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert out["chars"] > 100_000 and out["in22k"] and not out["448"], out


def test_memory_cli_prints_the_table_and_rejects_bad_device_counts():
  base = [sys.executable, "-m", "ijepa_jax.memory", "--config=configs/fashion_mnist.py", "--config.mesh.data=1",
          "--config.mesh.fsdp=-1", *TINY]
  proc = subprocess.run(base + ["--devices=1,2", "--per_device_batch=8"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| devices | mesh | global batch |" in proc.stdout and "temp (XLA:CPU estimate)" in proc.stdout
  assert "| 1 | data 1 x fsdp 1 | 8 |" in proc.stdout and "| 2 | data 1 x fsdp 2 | 16 |" in proc.stdout  # per device x N
  bad = subprocess.run(base + ["--devices=eight"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "give device counts" in bad.stderr


# ============================================================================ the TPU compiler (libtpu, compile only)
def test_tpu_slice_names_map_to_the_compilers_topologies():
  from ijepa_jax import tpu_topologies as t
  s = t.parse("v5p-128")   # 128 TensorCores = 64 megacore chips, one 4x4x4 cube with wrap-around
  assert (s.chips, s.topology_name, s.megacore, s.wrap, s.hbm_bytes) == (64, "v5:4x4x4", True, (True,) * 3, 95 * t.GIB)
  assert s.topology_kwargs(2) == dict(topology_name="v5:4x4x4", platform="tpu", chip_config_name="megacore",
                                      chips_per_host_bounds=(2, 2, 1), num_slices=2, wrap=(True, True, True))
  assert (t.parse("v5p-64").topology_name, t.parse("v5p-64").wrap) == ("v5:2x4x4", (False,) * 3)
  assert (t.parse("v4-64").topology_name, t.parse("v4-64").hbm_bytes) == ("v4:2x4x4", 32 * t.GIB)
  assert t.parse("v5e-256") == t.parse("v5litepod-256")
  assert (t.parse("v5e-256").name, t.parse("v5e-256").topology_name, t.parse("v5e-256").megacore) == \
      ("v5litepod-256", "v5e:16x16", False)
  assert t.parse("v5e-256").topology_kwargs()["chip_config_name"] == "default"
  assert (t.parse("v6e-256").topology_name, t.parse("v6e-256").chips, t.parse("v6e-256").hbm_bytes) == \
      ("v6e:16x16", 256, 32 * t.GIB)
  # larger v5p shapes as in Cloud TPU's catalogue
  assert [t.parse(f"v5p-{n}").topology_name for n in (256, 1024, 1152, 4096, 12288)] == \
      ["v5:4x4x8", "v5:8x8x8", "v5:4x12x12", "v5:8x16x16", "v5:16x16x24"]
  assert t.parse("v5p-128").doubled().name == "v5p-256" and t.parse("v6e-256").doubled() is None
  for bad in ("v5p-7", "v5p-192", "v5e-2", "v7-8", "tpu-v5p"):
    with pytest.raises(ValueError, match="valid forms: v4-N and v5p-N"):
      t.parse(bad)


def test_collectives_are_read_from_compiled_hlo_text():
  from ijepa_jax.hlo import collectives
  hlo = """
  %all-gather.1 = bf16[4,4,32]{2,1,0:T(4,128)(2,1)} all-gather(%f), channel_id=1, replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}
  %ag-start = (bf16[2,8]{1,0}, bf16[8,8]{1,0}) all-gather-start(%p), replica_groups={{0,1,2,3}}, dimensions={0}
  %ag-done = bf16[8,8]{1,0} all-gather-done(%ag-start)
  ROOT %all-reduce.2 = (f32[32]{0:T(128)}, f32[16]{0}) all-reduce(%a, %b), replica_groups=[2,4]<=[8], to_apply=%add
  %reduce-scatter.3 = f32[8,16]{1,0} reduce-scatter(%g), replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0','axis_1'}
  %all-gather.4 = f32[2]{0} all-gather(%h), replica_groups=mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_1'}
  %send.1 = (f32[2,8,128]{2,1,0:T(8,128)}, u32[], token[]) send(%x, %y), frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
  %recv.1 = (f32[2,8,128]{2,1,0}, u32[], token[]) recv(%y), frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
  %fusion.9 = f32[8]{0} fusion(%all-gather.1), kind=kLoop
  """
  c = collectives(hlo)
  assert c["all-gather"] == {"count": 3, "bytes": 2 * 4 * 4 * 32 + 2 * 8 * 8 + 4 * 2, "group_sizes": [2, 4]}
  assert c["all-reduce"] == {"count": 1, "bytes": 4 * 48, "group_sizes": [4]}
  assert c["reduce-scatter"] == {"count": 1, "bytes": 4 * 128, "group_sizes": [8]}
  assert c["all-reduce across slices (DCN)"] == {"count": 1, "bytes": 4 * 2 * 8 * 128, "group_sizes": []}
  assert set(c) == {"all-gather", "all-reduce", "reduce-scatter", "all-reduce across slices (DCN)"}


def test_while_loops_tell_windowed_einsums_from_other_loops():
  from ijepa_jax.hlo import while_loops
  hlo = """
  %while.53 = (bf16[64,196,768]{1,2,0}, u32[]) while(%tuple.1), condition=%wide.windowed_dot_general_cond_ag.1, body=%wide.windowed_dot_general_body_ag.1.sunk, backend_config={}
  %while.54 = (bf16[8]{0}, s32[]) while(%tuple.2), condition=%cond, body=%scan_body.3
  """
  assert while_loops(hlo) == {"all": 2, "windowed_einsum": 1}


TPU_SCRIPT = """
import sys, json, jax
jax.config.update("jax_platforms", "cpu")   # compile only: the TPU compiler needs no TPU runtime
sys.path.insert(0, "tests")
from conftest import tiny_config
from ijepa_jax import memory
# A matmul-heavy variant of the tiny model for the FLOP count (elementwise work is a few % of it).
WIDE = {"model.width": 128, "model.mlp_dim": 512, "model.predictor_width": 64}
out = {}
for name, topology, slices, mesh, overrides in [
    ("v5p-8", "v5p-8", 1, (1, -1), WIDE), ("v5p-16", "v5p-16", 1, (1, -1), WIDE),
    ("v5e-4", "v5e-4", 1, (2, 2), {}), ("2 x v5e-4", "v5e-4", 2, (1, -1), {})]:
  c = tiny_config(**overrides)
  c.mesh.data, c.mesh.fsdp = mesh
  out[name] = memory.tpu_report(c, topology, num_slices=slices)
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def tpu_reports():
  """Four tiny compiles with the TPU compiler in one process (~15 s each on one core)."""
  import json
  proc = subprocess.run([sys.executable, "-c", TPU_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TPU_ACCELERATOR_TYPE" not in proc.stderr and "TPU_WORKER_HOSTNAMES" not in proc.stderr  # kept quiet
  return json.loads(proc.stdout.split("RESULT", 1)[1])


def test_tpu_report_memory_figures_add_up_and_fit_the_chip(tpu_reports):
  for name, r in tpu_reports.items():
    assert r["peak"] == r["argument"] + r["output"] - r["alias"] + r["temp"] + r["generated_code"], name
    # temp may be 0 for these tiny steps
    assert r["argument"] >= r["state"] > 0 and r["alias"] > 0 and r["temp"] >= 0 and r["generated_code"] > 0, name
    assert r["peak"] > r["state"], name
    assert r["fits"] and r["headroom"] == r["hbm"] - r["peak"], name
    assert r["lower_s"] > 0 and r["compile_s"] > 0, name
  assert tpu_reports["v5p-8"]["hbm"] == 95 * 2 ** 30 and tpu_reports["v5e-4"]["hbm"] == 16 * 2 ** 30
  assert [tpu_reports[n]["devices"] for n in tpu_reports] == [4, 8, 4, 8]


def test_tpu_report_state_per_device_is_one_nth_under_fsdp(tpu_reports):
  small, big = tpu_reports["v5p-8"], tpu_reports["v5p-16"]
  assert small["mesh"] == {"data": 1, "fsdp": 4} and big["mesh"] == {"data": 1, "fsdp": 8}
  assert small["state_total"] == big["state_total"]
  for r in (small, big):   # within 10% of an even share: only biases and norm scales are replicated
    assert r["state"] == r["params"] + r["opt_state"] + r["target"]
    assert r["state_total"] / r["devices"] <= r["state"] <= 1.10 * r["state_total"] / r["devices"]
  assert 1.8 <= small["state"] / big["state"] <= 2.0


def test_tpu_report_flops_match_the_analytic_count(tpu_reports):
  for name in ("v5p-8", "v5p-16"):
    r = tpu_reports[name]   # the compiler also counts the elementwise work the analytic count leaves out
    assert r["while_loops"] == {"all": 0, "windowed_einsum": 0}, name   # else the compiler counts bodies once
    assert 1.0 <= r["flops"] / r["flops_analytic"] <= 1.06, (name, r["flops"] / r["flops_analytic"])
  assert abs(tpu_reports["v5p-8"]["flops"] / tpu_reports["v5p-16"]["flops"] - 2) < 0.1  # batch per device halves


def test_tpu_report_uses_every_configured_mesh_axis(tpu_reports):
  one = tpu_reports["v5e-4"]     # data 2 x fsdp 2: parameters gathered over fsdp pairs, gradients over all 4
  assert one["mesh"] == {"data": 2, "fsdp": 2} and one["batch"] == 16
  assert 2 in one["collectives"]["all-gather"]["group_sizes"]
  assert 4 in {s for e in one["collectives"].values() for s in e["group_sizes"]}
  assert one["state"] < 0.6 * one["state_total"]   # split over fsdp
  multi = tpu_reports["2 x v5e-4"]   # config.mesh inside each slice, config.mesh_dcn (data=-1) across
  assert multi["mesh"] == {"data": 2, "fsdp": 4} and multi["num_slices"] == 2 and multi["devices"] == 8
  assert multi["collectives"]["all-gather"]["group_sizes"] == [4]   # FSDP stays inside a slice (ICI)
  assert any(k.endswith("across slices (DCN)") for k in multi["collectives"])  # gradients cross slices


TPU_CLI = [sys.executable, "-m", "ijepa_jax.memory", "--config=configs/fashion_mnist.py", "--config.mesh.data=1",
           "--config.mesh.fsdp=-1", *TINY]


def test_memory_cli_tpu_mode_prints_the_table_and_what_to_change_when_it_does_not_fit():
  proc = subprocess.run(TPU_CLI + ["--topology=v5e-4", "--hbm_gib=0.001"], cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "v5litepod-4 (v5e:2x2, 4 chips, 1 TensorCore per chip): 4 devices, mesh data 1 x fsdp 4" in out
  assert "TPU compiler, compile only (libtpu 0.0.42" in out
  for row in ("| arguments", "| outputs", "| aliased", "| temp", "| generated code",
              "| peak = arguments + outputs - aliased + temp + code |", "| HBM per chip (v5e) | 1.0 MiB |",
              "| headroom | -", "| all-gather |"):
    assert row in out, row
  assert "FLOPs per device per step: compiler" in out and "analytic" in out
  line = [x for x in out.splitlines() if x.startswith("does not fit")][0]
  assert "--config.model.remat=full" in line and "--config.grad_accum_steps=2" in line
  assert "--topology=v5litepod-8" in line and "--per_device_batch=2" in line
  from ijepa_jax.memory import parse_text
  r = parse_text(out)
  assert r["peak"] > r["temp"] > 0 and not r["fits"] and r["compile_s"] > 0
  assert "TPU_ACCELERATOR_TYPE" not in proc.stderr and "TPU_WORKER_HOSTNAMES" not in proc.stderr


def test_memory_cli_tpu_mode_says_does_not_fit_when_the_compiler_runs_out_of_hbm():
  # 4096 images of 32x32 tokens per v5e chip: attention alone needs far more than 16 GiB, and the TPU
  # compiler refuses the program (RESOURCE_EXHAUSTED) before any memory analysis exists
  proc = subprocess.run(TPU_CLI + ["--topology=v5e-4", "--config.data.image_size=64", "--per_device_batch=4096"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
  out = proc.stdout
  assert "The TPU compiler stopped: RESOURCE_EXHAUSTED: Ran out of memory on HBM" in out
  line = [x for x in out.splitlines() if x.startswith("does not fit")][0]
  assert "the TPU compiler ran out of HBM: temporaries alone need" in line and "(16.00 GiB HBM per chip)" in line
  assert "--config.model.remat=full" in line and "--topology=v5litepod-8" in line and "--per_device_batch=2048" in line
  from ijepa_jax.memory import parse_text   # what experiments/ read back from the CLI
  r = parse_text(out)
  assert r["peak"] is None and not r["fits"] and r["temp"] > 16 and r["compile_s"] > 0


def test_out_of_memory_report_reads_the_compilers_figures():
  from ijepa_jax.memory import GIB, out_of_memory_report
  r = out_of_memory_report("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total "
                           "memory required for HLO temporaries (69.92G) exceeds available HBM (31.25G).\nmore")
  assert r["fits"] is False and r["compiler_error"].startswith("RESOURCE_EXHAUSTED: Ran out of memory on HBM")
  assert r["temp"] == int(69.92 * GIB) and r["hbm_available"] == int(31.25 * GIB)
  other = out_of_memory_report("RESOURCE_EXHAUSTED: something else")
  assert other["temp"] is None and other["hbm_available"] is None and not other["fits"]


@pytest.mark.parametrize("flags, message", [
    (["--topology=v5p-7"], "valid forms: v4-N and v5p-N"),
    (["--topology=v5p-8", "--devices=8"], "--topology and --devices are exclusive"),
    (["--num_slices=2"], "go with --topology"),
    (["--topology=v5p-8", "--num_slices=0"], "--num_slices=0 must be at least 1"),
])
def test_memory_cli_rejects_misuse_in_one_line(flags, message):
  proc = subprocess.run(TPU_CLI + flags, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


TIME_SCRIPT = """
import sys, json, jax
jax.config.update("jax_platforms", "cpu")
sys.path.insert(0, "tests")
from conftest import tiny_config
from ijepa_jax import aot, cost_model, tpu_topologies
c = tiny_config(**{"model.width": 128, "model.mlp_dim": 512, "model.predictor_width": 64, "model.depth": 4,
                   "model.predictor_depth": 3, "model.scan_layers": True})
t = cost_model.time_estimate(c, "v5p-8")
c.model.scan_layers = False   # the whole unrolled step, to check the extrapolation against
whole = aot.compile_step(c, aot.tpu_devices(tpu_topologies.parse("v5p-8")))["compiled"]
direct, direct_flops = cost_model.optimal_seconds(whole), cost_model.compiler_flops(whole)
print("RESULT" + json.dumps(dict(t, direct=direct, direct_flops=direct_flops)))
"""


def test_time_estimate_extrapolates_unrolled_compiles_to_the_whole_step():
  """The cost model's step time from compiles at depths (1, 1), (2, 1), (1, 2) matches the unrolled step at the
  config's depths (4, 3): each block is the same program, and the scanned step would be costed as one block."""
  import json
  proc = subprocess.run([sys.executable, "-c", TIME_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  t = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert t["depths"] == [4, 3] and t["encoder_block_s"] > 0 and t["predictor_block_s"] > 0
  assert abs(t["step_s"] / t["direct"] - 1) < 0.03, t
  assert t["compiler_flops_per_image"] == pytest.approx(t["direct_flops"] * 4 / 16, rel=0.01)   # 4 chips, batch 16
  assert t["images_per_s_per_chip"] == pytest.approx(16 / 4 / t["step_s"]) and 0 < t["mfu"] < 1


# ============================================================================ XLA's GPU compiler (CUDA plugin, compile only)
def test_gpu_targets_ship_xlas_specs_and_name_hosts_of_eight():
  from ijepa_jax import gpu_targets as g
  sizes = {name: g.hbm_bytes(g.spec_text(name)) for name in g.SPECS}
  assert 79 * 2 ** 30 < sizes["h100"] < 80 * 2 ** 30 and 79 * 2 ** 30 < sizes["a100"] < 80 * 2 ** 30   # "80GB"
  assert 140 * 2 ** 30 < sizes["h200"] < 142 * 2 ** 30
  assert [g.gpu_name(g.spec_text(n)) for n in g.SPECS] == \
      ["NVIDIA H100 80GB HBM3", "NVIDIA H200 141GB HBM3e", "NVIDIA A100-SXM4-80GB"]
  for name in g.SPECS:   # the field jaxlib 0.10.2's GpuTargetConfigProto refuses is trimmed away
    assert "collective_memory_granularity:" not in g.spec_text(name) and "Apache" in g.spec_text(name)
  assert [g.topology(n) for n in (1, 8, 16, 64)] == ["1x1x1", "1x1x8", "1x2x8", "1x8x8"]
  for bad in (0, 12):
    with pytest.raises(g.ConfigError, match="multiple of 8"):
      g.topology(bad)


def test_gpu_targets_name_the_fix_when_the_plugin_or_ptxas_is_missing(monkeypatch):
  import importlib.util

  from ijepa_jax import gpu_targets as g
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("jax_plugins") else
                      real(name, *a))
  with pytest.raises(g.ConfigError, match=r"pip install -e '\.\[gpu_compile\]'"):
    g.check_toolchain()
  monkeypatch.setattr(importlib.util, "find_spec", real)
  if importlib.util.find_spec("jax_plugins") is None:
    pytest.skip("the gpu_compile extra is not installed")
  monkeypatch.setattr(g, "_ptxas_candidates", lambda: ["/nonexistent/bin/ptxas"])
  with pytest.raises(g.ConfigError, match=r"needs ptxas and libdevice .*with-cuda"):
    g.check_toolchain()
  assert g.toolchain_error("INTERNAL: libdevice not found at ./libdevice.10.bc") is not None


def test_largest_batch_brackets_then_narrows_to_the_largest_batch_that_fits():
  """The search logic on a synthetic step (peak linear in the batch plus a bump every third batch, so not
  monotone): for many memory sizes, starts and multiples its answer fits and the next multiple up does not
  (None only when the smallest batch does not fit), in a few probes."""
  from ijepa_jax.memory import largest_batch
  for multiple in (1, 4):
    for start in (None, 4, 96, 1000):
      for hbm in (0.5, 90, 250, 1234.5, 5000):
        peak = lambda b: 10 + 3.1 * b + (7 if b % 3 == 0 else 0)
        def probe(b, hbm=hbm, peak=peak):
          assert b is None or type(b) is int, b   # a per-device batch is a whole number
          b = b or 64                             # the config's own
          return {"batch": 8 * b, "mesh": {"data": 1, "fsdp": 8}, "peak": peak(b), "temp": 0, "hbm": hbm,
                  "fits": peak(b) <= hbm, "compile_s": 0.0}
        found = largest_batch(probe, start, multiple=multiple, say=lambda line: None)
        fitting = [b for b in range(multiple, 5000, multiple) if peak(b) <= hbm]
        assert found["batch"] in fitting + [None] and found["over"] not in fitting, (multiple, start, hbm, found)
        if found["batch"] is not None:   # the answer fits and the next batch up does not
          assert found["over"] == found["batch"] + multiple and peak(found["batch"] + multiple) > hbm
          assert found["report"] is found["probes"][found["batch"]]
        else:
          assert peak(multiple) > hbm and found["over"] == multiple
        assert len(found["probes"]) <= 16, len(found["probes"])


GPU_SCRIPT = """
import sys, json, jax
jax.config.update("jax_platforms", "cpu")   # compile only: XLA's GPU compiler needs no GPU
sys.path.insert(0, "tests")
from conftest import tiny_config
from ijepa_jax import aot, gpu_targets, memory
out = {}
for b in (1, 2):
  c = tiny_config()
  c.mesh.data, c.mesh.fsdp = 1, -1
  out[b] = memory.gpu_report(c, "h100", 8, per_device_batch=b)
  # jit leaves out of the executable the inputs the step never reads (a few optimizer scalars): their bytes
  low = aot.lower_step(c, gpu_targets.gpu_devices("h100", 8), b)
  leaves = jax.tree.leaves((low["abstract_state"], low["abstract_batch"]))
  kept = low["lowered"]._lowering.compile_args["kept_var_idx"]
  out[b]["unused_bytes"] = sum(aot._bytes_per_device(x) for i, x in enumerate(leaves) if i not in kept)
  out[b]["train_state_bytes"] = aot._bytes_per_device(low["abstract_state"])   # the parts and the step counter
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def gpu_reports():
  """The tiny step compiled for 8 H100s at 1 and 2 images per GPU (~15 s a compile on one core)."""
  import importlib.util
  import json
  if importlib.util.find_spec("jax_plugins") is None:
    pytest.skip("the gpu_compile extra (jax's CUDA plugin) is not installed")
  proc = subprocess.run([sys.executable, "-c", GPU_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {int(b): r for b, r in json.loads(proc.stdout.split("RESULT", 1)[1]).items()}


def test_gpu_report_arguments_are_the_sharded_train_state_and_batch(gpu_reports):
  for b, r in gpu_reports.items():
    assert r["devices"] == 8 and r["gpu_topology"] == "1x1x8" and r["mesh"] == {"data": 1, "fsdp": 8}
    assert r["batch"] == 8 * b and r["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert r["train_state_bytes"] == r["state"] + 4   # params, opt state, EMA target, int32 step
    assert r["argument"] == r["train_state_bytes"] + r["batch_bytes"] - r["unused_bytes"], r
    assert 0 <= r["unused_bytes"] <= 16
    assert r["state_total"] / 8 <= r["state"] < r["state_total"] / 2      # FSDP over 8 GPUs
    assert r["alias"] >= r["state"] - 64 and r["alias"] <= r["output"]     # the donated state is updated in place
    assert r["peak"] == r["argument"] + r["output"] - r["alias"] + r["temp"] + r["generated_code"]
    assert r["fits"] and r["headroom"] == r["hbm"] - r["peak"]
    assert "all-gather" in r["collectives"] and 8 in r["collectives"]["all-gather"]["group_sizes"]
  one, two = gpu_reports[1], gpu_reports[2]
  assert two["state"] == one["state"] and two["batch_bytes"] == 2 * one["batch_bytes"]
  assert two["temp"] > one["temp"] > 0   # activations grow with the images per GPU


GPU_CLI = TPU_CLI   # the tiny config, FSDP over every device


def test_memory_cli_gpu_max_batch_finds_the_largest_batch_that_fits(gpu_reports):
  """With an HBM between the peaks at 1 and 2 images per GPU (as the fixture's own compiles give them) the search
  from 2 answers 1: 1 fits, 2 (= 1 + 1 = 2 x 1) does not."""
  hbm = (gpu_reports[1]["peak"] + gpu_reports[2]["peak"]) / 2
  assert gpu_reports[1]["peak"] <= hbm < gpu_reports[2]["peak"]
  proc = subprocess.run(GPU_CLI + ["--gpu=h100", "--per_device_batch=2", "--max_batch", f"--hbm_gib={hbm / 2 ** 30}"],
                        cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  probes = re.findall(r"^per-device batch (\d+) \(global (\d+)\): peak [^:]*: (fits|does not fit)", out, re.M)
  assert probes == [("2", "16", "does not fit"), ("1", "8", "fits")], probes
  assert "largest per-GPU batch that fits: 1 (2 does not;" in out
  assert "8 x NVIDIA H100 80GB HBM3 (topology 1x1x8, one host): mesh data 1 x fsdp 8, global batch 8 (1 per GPU)" in out
  assert "XLA GPU compiler, compile only (no autotuning: temp may differ from a real GPU); jax 0.10.2" in out
  from ijepa_jax.memory import parse_text
  r = parse_text(out)   # the report of the answer, batch 1: the fixture's compile of the same step
  assert r["fits"] and r["compile_s"] > 0 and r["hbm"] == pytest.approx(hbm / 2 ** 30, rel=1e-3)
  assert r["peak"] == pytest.approx(gpu_reports[1]["peak"] / 2 ** 30, rel=0.01)
  assert r["temp"] == pytest.approx(gpu_reports[1]["temp"] / 2 ** 30, rel=0.01)


@pytest.mark.parametrize("flags, message", [
    (["--gpu=v100"], "is not a known GPU: use one of h100, h200, a100"),
    (["--gpu=/nonexistent/b200.txtpb"], "no such spec file"),
    (["--gpu=h100", "--gpus=12"], "multiple of 8"),
    (["--gpu=h100", "--topology=v5p-8"], "--topology and --gpu are exclusive"),
    (["--max_batch"], "go with --gpu"),
])
def test_memory_cli_gpu_misuse_is_one_error_line(flags, message):
  proc = subprocess.run(GPU_CLI + flags, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and f"error: " in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_with_libtpu_and_the_cuda_plugin_installed_a_process_without_accelerators_starts_on_the_cpu_quietly():
  """The gpu_compile extra installs the CUDA plugin, whose start-up check fails without CUDA's libraries
  (a logged traceback in every process) unless jax is asked for the CPU: ijepa_jax asks where it is certain."""
  import importlib.util
  import os
  from jax._src import hardware_utils
  if importlib.util.find_spec("jax_plugins") is None or hardware_utils.has_visible_nvidia_gpu() or \
      hardware_utils.num_available_tpu_chips_and_device_id()[0]:
    pytest.skip("needs the CUDA plugin installed and no GPU or TPU")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  proc = subprocess.run([sys.executable, "-c", "import ijepa_jax, jax, os; print(jax.default_backend(), "
                         "os.environ['JAX_PLATFORMS'], 'cuda' in jax._src.xla_bridge._backend_factories)"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.split() == ["cpu", "cpu", "True"], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "TPU_ACCELERATOR_TYPE" not in proc.stderr, proc.stderr[-2000:]
