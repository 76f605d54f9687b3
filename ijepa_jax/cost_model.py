"""The TPU compiler's cost model: the FLOPs and the time it gives a compiled train step (a lower bound on
time, not a measurement), images/s per chip and the implied MFU.

On compile-only TPU devices `compiled.cost_analysis()` carries 'flops' and 'optimal_seconds'; the XLA GPU
compiler's compile-only executables give no cost analysis (None), so this is TPU only.
"""
from __future__ import annotations

import re

def _cost(compiled) -> dict:
  """cost_analysis() of one device's program (older jax returns a list of one)."""
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def compiler_flops(compiled) -> float:
  """The FLOPs of one device's program, as the compiler counts them (NaN where it gives no cost analysis)."""
  cost = _cost(compiled)
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def optimal_seconds(compiled) -> float:
  """The TPU cost model's time for one device's program: cost_analysis()['optimal_seconds'], plus 1 s per
  ConcatBitcast (v4 and v6e programs join fp32 weight slices with it and the model prices each at -1 s;
  experiments/results/eval_cost.md)."""
  bitcasts = len(re.findall(r'custom_call_target="ConcatBitcast"', compiled.as_text()))
  return float(_cost(compiled)["optimal_seconds"]) + bitcasts


def time_estimate(config, topology: str, num_slices: int = 1, per_device_batch: int | None = None) -> dict:
  """The TPU compiler's cost-model time for the config's train step: a lower bound, not a measurement.

  The cost model counts a loop's body once, so a scanned layer stack would be costed as one block: the step is
  compiled unrolled (scan_layers=False) at encoder / predictor depths (1, 1), (2, 1) and (1, 2) and extrapolated
  linearly to the config's depths (each block the same program). Returns {'step_s', 'encoder_block_s',
  'predictor_block_s', 'depths', 'images_per_s_per_chip', 'mfu' (the step's analytic FLOPs over the step time at
  the chip's bf16 peak), 'peak_flops', 'flops_per_image' (analytic), 'compiler_flops_per_image' (the compiler's
  count, extrapolated the same way)}."""
  import ml_collections
  from ijepa_jax import flops, tpu_topologies
  from ijepa_jax.aot import compile_step, tpu_devices
  from ijepa_jax import state as state_lib
  from ijepa_jax.errors import ConfigError
  slice_ = tpu_topologies.parse(topology)
  devices = tpu_devices(slice_, num_slices)
  encoder, predictor = state_lib.models(config)
  depths = (encoder.depth, predictor.depth)

  def seconds(depth: int, predictor_depth: int) -> tuple[float, float, dict]:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.scan_layers, c.model.depth, c.model.predictor_depth = False, depth, predictor_depth
    compiled = compile_step(c, devices, per_device_batch)
    if compiled["compiled"] is None:
      raise ConfigError(f"the step does not fit {topology} even with {depth} encoder block(s): no time estimate.")
    return optimal_seconds(compiled["compiled"]), compiler_flops(compiled["compiled"]), compiled

  (base, base_flops, low), (two_enc, enc_flops, _), (two_pred, pred_flops, _) = (
      seconds(1, 1), seconds(2, 1), seconds(1, 2))
  extrapolate = lambda one, enc, pred: one + (depths[0] - 1) * (enc - one) + (depths[1] - 1) * (pred - one)
  encoder_block, predictor_block = two_enc - base, two_pred - base
  step = extrapolate(base, two_enc, two_pred)
  sampler, batch = low["sampler"], low["report"]["batch"]
  per_image = flops.config_flops(config, sampler.num_context, sampler.num_targets, sampler.num_target)["total"]
  peak = tpu_topologies.PEAK_BF16_FLOPS[slice_.generation]
  chips = slice_.chips * num_slices
  return dict(step_s=step, encoder_block_s=encoder_block, predictor_block_s=predictor_block, depths=depths,
              images_per_s_per_chip=batch / chips / step, mfu=per_image * batch / chips / step / peak,
              peak_flops=peak, grad_accum_steps=int(config.grad_accum_steps), flops_per_image=per_image,
              compiler_flops_per_image=extrapolate(base_flops, enc_flops, pred_flops) * len(devices) / batch)


def time_text(t: dict, generation: str) -> str:
  lines = [f"TPU compiler's cost model (a lower bound on time, not a measurement; the step compiled unrolled at "
           f"encoder / predictor depths (1, 1), (2, 1), (1, 2), extrapolated to {t['depths']}): step "
           f"{t['step_s']:.4g} s, {t['images_per_s_per_chip']:.0f} images/s per chip, MFU {100 * t['mfu']:.0f}% "
           f"(the step's analytic FLOPs at {generation}'s {t['peak_flops'] / 1e12:.0f} TFLOP/s bf16); per block: "
           f"encoder {t['encoder_block_s']:.3g} s, predictor {t['predictor_block_s']:.3g} s"]
  if t["grad_accum_steps"] > 1:
    lines.append(f"  with grad_accum_steps={t['grad_accum_steps']} the micro-batch loop is counted once: the "
                 f"step takes about {t['grad_accum_steps']}x longer")
  return "\n".join(lines)
