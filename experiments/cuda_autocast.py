"""torch's CUDA bf16 autocast, reproduced on CPU: the numerics that trained the release's checkpoints.

The release runs its step under `torch.cuda.amp.autocast(dtype=torch.bfloat16)`. On a machine without
a GPU, `torch.autocast("cpu", dtype=torch.bfloat16)` applies CPU's op lists, which differ from CUDA's for
ops the release calls: CUDA autocast runs `softmax` and `layer_norm` in fp32 (its float32 list), CPU
autocast runs them in their input's dtype. `cuda_autocast()` is CPU autocast plus explicit fp32 casts for
exactly the ops whose CPU behaviour differs from CUDA's (found by probing, see `cpu_differences`), so
that the release's own modules can run with CUDA's mixed precision here.

Ops the release uses, and what CUDA autocast does with them:
  linear / matmul (@) / conv2d  -> bf16 inputs, bf16 output           (same on CPU)
  softmax, layer_norm           -> fp32 inputs, fp32 output            (CPU: input dtype; cast here)
  smooth_l1_loss, mse_loss      -> fp32                                (same on CPU)
  add, cat                      -> the wider input dtype (fp32 + bf16 = fp32)   (same on CPU)
  GELU, in-place adds           -> their input's dtype                 (same on CPU)
"""
from __future__ import annotations

import contextlib

# The ops CUDA autocast runs in fp32 that the release calls (torch's autocast_mode.cpp, CUDA float32 list).
CUDA_FP32 = ("softmax", "layer_norm")


def _fp32_ops(torch):
  f = torch.nn.functional
  return {f.softmax, torch.softmax, torch.Tensor.softmax, f.layer_norm, torch.layer_norm}


def cpu_differences(torch) -> list[str]:
  """The ops of CUDA_FP32 that CPU autocast does not run in fp32 on a bf16 input (probed, not assumed)."""
  x = torch.ones(2, 4, dtype=torch.bfloat16)
  out = []
  with torch.autocast("cpu", dtype=torch.bfloat16):
    if x.softmax(-1).dtype != torch.float32:
      out.append("softmax")
    if torch.nn.functional.layer_norm(x, (4,)).dtype != torch.float32:
      out.append("layer_norm")
  return out


@contextlib.contextmanager
def cuda_autocast(torch):
  """torch.autocast('cpu', bf16), with softmax and layer_norm in fp32 as on CUDA."""
  from torch.overrides import TorchFunctionMode
  fp32_ops = _fp32_ops(torch)

  class _Fp32Ops(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
      kwargs = kwargs or {}
      if func in fp32_ops:
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        kwargs = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                  for k, v in kwargs.items()}
      return func(*args, **kwargs)

  with torch.autocast("cpu", dtype=torch.bfloat16), _Fp32Ops():
    yield
