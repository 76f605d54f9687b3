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
    for name in ("vit_b16", "vit_l16", "vit_h14", "vit_h16_448", "vit_h14_in22k", "vit_g16_in22k", "fashion_mnist"):
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
      # a matrix: 2-D, or under the layer scan a stack of them (3-D: the leading axis the blocks'; the
      # blocks' stacked vectors, norms and biases, are vectors as in the unrolled layout)
      leaves = [(any(getattr(k, "key", None) in ("blocks", "predictor_blocks") for k in path), x)
                for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]]
      matrices = [x for stacked, x in leaves if x.ndim >= 2 + stacked]
      out[name] = dict(mesh=dict(mesh.shape), ratio=per_device / (total / 8),
                       unsplit=sum(x.sharding.shard_shape(x.shape) == x.shape for x in matrices),
                       matrices=len(matrices), scan=bool(c.model.scan_layers),
                       stacked=[x.shape[0] for stacked, x in leaves if stacked and x.ndim >= 3])
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
  for name in ("vit_b16", "vit_l16", "vit_h14", "vit_h16_448", "vit_h14_in22k", "vit_g16_in22k"):
    assert out[name]["mesh"] == {"data": 1, "fsdp": 8}, out[name]
    # the layer scan by default: the blocks' matrices (qkv, proj, fc1, fc2) stacked on a leading axis of
    # the encoder's and the predictor's depth; every matrix split
    depths = {"vit_g16_in22k": (40, 16), "vit_b16": (12, 6), "vit_l16": (24, 12)}.get(name, (32, 12))
    assert out[name]["scan"] and sorted(set(out[name]["stacked"])) == sorted(depths), out[name]
    assert len(out[name]["stacked"]) == 8, out[name]
    assert out[name]["unsplit"] == 0, out[name]
    assert out[name]["ratio"] <= 1.15, out[name]
  assert out["fashion_mnist"]["mesh"] == {"data": 8, "fsdp": 1} and abs(out["fashion_mnist"]["ratio"] - 8) < 1e-9


INDIVISIBLE = textwrap.dedent("""
    import json, sys, jax, flax.linen as nn, numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from ijepa_jax import memory, sharding, train
    from ijepa_jax.mask_strategies import make_sampler
    out = {}
    for scan in (False, True):
      # width 12 over fsdp 8 (as a 384-wide predictor over 256 chips): 'embed' cannot be split 8 ways
      c = tiny_config(**{"model.width": 12, "model.predictor_width": 12, "model.depth": 2,
                         "model.predictor_depth": 2, "model.scan_layers": scan})
      c.mesh.data, c.mesh.fsdp = 1, 8
      mesh = sharding.make_mesh(c.mesh, jax.devices())
      _, state, _, _ = train.build(c, mesh, make_sampler(c.mask, 8), total_steps=10, warmup_steps=1)
      flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
      out[str(scan)] = {"specs": {jax.tree_util.keystr(k): [a if a is None else str(a) for a in x.sharding.spec] + [None] * (x.ndim - len(x.sharding.spec))
                                  for k, x in flat},
                        "shapes": {jax.tree_util.keystr(k): list(x.shape) for k, x in flat},
                        "report": memory.report(c, jax.devices())}   # lowers and compiles the step (XLA:CPU)
    s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp"))
    stacked = nn.Partitioned(jax.ShapeDtypeStruct((8, 12), np.float32), names=("layers", "embed"))
    out["stacked"] = list(sharding.fit(s, stacked).spec)          # never moved onto the scanned axis
    fits = nn.Partitioned(jax.ShapeDtypeStruct((8, 16), np.float32), names=("layers", "embed"))
    out["kept"] = sharding.fit(s, fits) is s
    print("RESULT" + json.dumps(out))
""")


def test_dimensions_the_mesh_does_not_divide_are_refitted_not_refused():
  """A width that fsdp does not divide (ViT-H/16-448's 384-wide predictor, ViT-g's 1408, over 256 chips)
  would make jit refuse the train state: such a dimension is left unsplit, its mesh axis moves to the
  largest other dimension it divides (never the layer scan's axis), and the step compiles."""
  import json
  proc = subprocess.run([sys.executable, "-c", INDIVISIBLE], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  for scan in ("False", "True"):
    specs, shapes = out[scan]["specs"], out[scan]["shapes"]
    for key, spec in specs.items():   # every split dimension is divisible by its 8 ways
      assert all(n % 8 == 0 for n, a in zip(shapes[key], spec) if a == "fsdp"), (key, spec, shapes[key])
    mlp_in = [k for k in specs if "encoder" in k and "mlp" in k.lower() and shapes[k][-2:] == [12, 64]]
    assert mlp_in and all(specs[k][-2:] == [None, "fsdp"] for k in mlp_in), {k: specs[k] for k in mlp_in}
    norms = [k for k in specs if "norm" in k and shapes[k][-1:] == [12]]
    assert norms and all(set(specs[k]) == {None} for k in norms)   # the 12-vectors: replicated
    assert out[scan]["report"]["temp"] > 0 and out[scan]["report"]["mesh"] == {"data": 1, "fsdp": 8}
    assert out[scan]["report"]["state_ratio"] < 8   # the matrices are still split
  assert out["stacked"] == [None, None] and out["kept"] is True
