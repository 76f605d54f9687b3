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
