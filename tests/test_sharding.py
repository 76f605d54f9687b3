"""Meshes from the config: one slice, and several slices (DCN x ICI) laid out by create_hybrid_device_mesh."""
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, sys, jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    sys.path.insert(0, "tests")
    from ijepa_jax import sharding
    from ijepa_jax.errors import ConfigError

    class Sliced:  # a CPU device that says which TPU slice it is in (CPU devices have no slice_index)
      def __init__(self, device, slice_index):
        self._device, self.slice_index = device, slice_index
      def __getattr__(self, name):
        return getattr(self._device, name)

    out = {}
    def layout(mesh):
      return [[(d.slice_index, d.id) for d in row] for row in mesh.devices]
    two = [Sliced(d, i // 4) for i, d in enumerate(jax.devices())]        # 2 slices of 4 devices
    out["dcn_data"] = layout(sharding.make_mesh({"data": 1, "fsdp": 4}, two, {"data": -1}))
    out["dcn_fsdp"] = layout(sharding.make_mesh({"data": 2, "fsdp": 2}, two, {"data": 1, "fsdp": 2}))
    out["shape"] = dict(sharding.make_mesh({"data": -1}, two, {"data": 2}).shape)
    errors = []
    for mesh, dcn, devices in [({"data": 1, "fsdp": 4}, {"data": 4}, two),     # 4 slices asked, 2 there
                               ({"data": 8}, {"data": 2}, two),                # 8 per slice asked, 4 there
                               ({"data": -1}, {"data": 2}, jax.devices()),     # one slice, 2 asked
                               ({"data": -1}, {"data": -1}, two[:5])]:         # uneven slices
      try:
        sharding.make_mesh(mesh, devices, dcn)
        errors.append("")
      except ConfigError as e:
        errors.append(str(e))
    out["errors"] = errors
    one = sharding.make_mesh({"data": 2, "fsdp": -1}, jax.devices(), {"data": -1, "fsdp": 1})
    out["one_slice"] = [[d.id for d in row] for row in one.devices]
    print("RESULT" + json.dumps(out))
""")


def test_hybrid_mesh_keeps_each_slice_together_and_errors_name_the_fix():
  import json
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  # data across slices: each row of the (data, fsdp) mesh is one slice, so FSDP stays inside a slice
  assert out["dcn_data"] == [[[0, 0], [0, 1], [0, 2], [0, 3]], [[1, 4], [1, 5], [1, 6], [1, 7]]]
  # fsdp across slices (2 x 2 per slice, 1 x 2 slices): the fsdp axis's outer half is the slice
  assert [[s for s, _ in row] for row in out["dcn_fsdp"]] == [[0, 0, 1, 1], [0, 0, 1, 1]]
  assert out["shape"] == {"data": 8, "fsdp": 1}
  slices, per_slice, single, uneven = out["errors"]
  assert "config.mesh_dcn" in slices and "2 slices" in slices
  assert "config.mesh" in per_slice and "4 devices in each slice" in per_slice
  assert "config.mesh_dcn" in single and "1 slices" in single
  assert "unevenly" in uneven
  assert out["one_slice"] == [[0, 1, 2, 3], [4, 5, 6, 7]]    # one slice: the plain mesh, as before


PAPER_DEFAULT = textwrap.dedent("""
    import importlib.util, json, math, jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    from ijepa_jax import sharding, train
    from ijepa_jax.masks import MultiBlockSampler
    out = {}
    for name in ("vit_h14", "vit_h16_448", "vit_h14_in22k", "vit_g16_in22k", "fashion_mnist"):
      spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      c = module.get_config()
      mesh = sharding.make_mesh(c.mesh, jax.devices())        # the config's own mesh, unchanged
      sampler = MultiBlockSampler.from_config(c.mask, c.data.image_size // c.model.patch_size)
      _, state, _, _ = train.build(c, mesh, sampler, total_steps=10, warmup_steps=1)   # shapes only
      leaves = [x for part in (state.params, state.opt_state, state.target) for x in jax.tree.leaves(part)]
      per_device = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
      total = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
      matrices = [x for x in jax.tree.leaves(state.params) if x.ndim >= 2]
      out[name] = dict(mesh=dict(mesh.shape), ratio=per_device / (total / 8),
                       unsplit=sum(x.sharding.shard_shape(x.shape) == x.shape for x in matrices),
                       matrices=len(matrices))
    print("RESULT" + json.dumps(out))
""")


def test_paper_configs_shard_the_train_state_by_default():
  """The plain command on a pod is the memory-efficient one: on 8 devices each paper config's own mesh
  splits every parameter matrix (and so the optimizer state and the EMA target) over the devices; the
  Fashion-MNIST demo stays data parallel on its CPU devices."""
  import json
  proc = subprocess.run([sys.executable, "-c", PAPER_DEFAULT], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  for name in ("vit_h14", "vit_h16_448", "vit_h14_in22k", "vit_g16_in22k"):
    assert out[name]["mesh"] == {"data": 1, "fsdp": 8}, out[name]
    assert out[name]["unsplit"] == 0 and out[name]["matrices"] > 100, out[name]
    assert out[name]["ratio"] <= 1.15, out[name]
  assert out["fashion_mnist"]["mesh"] == {"data": 8, "fsdp": 1} and abs(out["fashion_mnist"]["ratio"] - 8) < 1e-9
