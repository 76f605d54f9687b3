"""I-JEPA pretraining loop: config -> mesh -> data -> sharded init -> jitted step -> checkpoints -> probe."""
from __future__ import annotations

import dataclasses
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ijepa_jax import checkpoint, data, metrics, optim, preemption, sharding, storage
from ijepa_jax import state as state_lib
from ijepa_jax.errors import ConfigError
from ijepa_jax.evaluation import probes
from ijepa_jax.evaluation.monitor import Monitor
from ijepa_jax.loading import load  # noqa: F401  (train.load: notebooks and scripts call it by this name)
from ijepa_jax.mask_strategies import make_sampler
from ijepa_jax.state import DTYPES
from ijepa_jax.step import LOSSES, TARGETS, make_train_step


# ============================================================================ config checks
def check_config(config: ml_collections.ConfigDict) -> None:
  """Everything that can be wrong with a config, found before any data is read or code compiled."""
  d, m = config.data, config.model
  if d.image_size % m.patch_size:
    raise ConfigError(
        f"data.image_size={d.image_size} is not divisible by model.patch_size={m.patch_size}: "
        f"set --config.data.image_size to a multiple of {m.patch_size}.")
  if config.loss not in LOSSES:
    raise ConfigError(f"loss={config.loss!r}: use --config.loss=smooth_l1 (release) or l2 (paper).")
  if config.target not in TARGETS:
    raise ConfigError(f"target={config.target!r} is not one of {TARGETS}: use --config.target=representation "
                      "(I-JEPA) or pixels (the paper's ablation: MAE-style normalised patch pixels).")
  if config.dtype not in DTYPES:
    raise ConfigError(f"dtype={config.dtype!r}: use --config.dtype=float32 or bfloat16.")
  if config.batch_size <= 0:
    raise ConfigError(f"batch_size={config.batch_size} must be positive.")
  if len(d.mean) != d.channels or len(d.std) != d.channels:
    raise ConfigError(f"data.mean/std need {d.channels} values (one per channel).")


def check_processes(config, sampler, process_count: int, num_devices: int) -> None:
  """What the global batch must divide, for this many processes and devices (a launch recipe's numbers:
  e.g. a v5p-256 is 32 processes x 4 chips, a SLURM job of 4 nodes x 8 GPUs 32 processes x 1 GPU)."""
  sharding.mesh_shape(config.mesh, num_devices)     # a mesh that does not fit the devices is named there
  b = config.batch_size
  if b % num_devices or b % process_count:
    raise ConfigError(f"batch_size={b} is not divisible by the {num_devices} devices (the batch is split over "
                      f"all of them) and the {process_count} processes: change --config.batch_size to a multiple "
                      f"of {math.lcm(num_devices, process_count)}.")
  data.mask_group_size(sampler, b)
  check_accumulation(config, num_devices)


def check_accumulation(config, dp: int) -> None:
  """Each micro-batch must split evenly over the data-parallel devices."""
  k = config.grad_accum_steps
  if k < 1 or config.batch_size % (dp * k):
    raise ConfigError(
        f"grad_accum_steps={k} does not split batch_size={config.batch_size} into micro-batches of a whole "
        f"number of images per data-parallel device ({dp}): the batch must be a multiple of {dp} x {max(k, 1)}; "
        f"change --config.grad_accum_steps or --config.batch_size.")


# ============================================================================ model + state
def build(config, mesh, sampler, total_steps: int, warmup_steps: int):
  """Models, optimizer, the abstract sharded TrainState, a born-sharded initializer and the jitted step."""
  d = config.data
  encoder, predictor = state_lib.models(config)
  tx = optim.make_optimizer(config.optim)
  rules = sharding.rules(config)
  init_state = state_lib.make_init(config, encoder, predictor, tx, sampler)
  rng = jax.random.key(config.seed)
  abstract_state, state_shardings = state_lib.abstract(jax.eval_shape(init_state, rng), mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=state_shardings)

  step_fn = make_train_step(encoder, predictor, tx, optim.make_schedules(config.optim, total_steps, warmup_steps),
                            config.loss, d.mean, d.std, config.skip_nonfinite_steps, config.grad_accum_steps,
                            config.target, config.model.patch_size)
  batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("images", "skipped", *sampler.example_shapes())}
  traces = []

  def traced_step(state, batch):
    traces.append(1)   # once per program: jit traces a function once for each new input signature
    return step_fn(state, batch)

  train_step = jax.jit(traced_step, in_shardings=(state_shardings, batch_shardings),
                       out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  train_step.programs = traces  # len(): the programs this step has compiled (or read from the cache)
  return encoder, abstract_state, (lambda: init(rng)), train_step


def abstract_batch(config, sampler, mesh, context_length: int | None = None) -> dict:
  """The global batch the step takes, as ShapeDtypeStructs split over the batch axes (context_idx cut to
  context_length when given: a context bucket)."""
  b, size, spec = config.batch_size, config.data.image_size, sharding.batch_sharding(mesh)
  shapes = dict(sampler.example_shapes())
  if context_length is not None:
    shapes["context_idx"] = (context_length,)
  out = {"images": jax.ShapeDtypeStruct((b, size, size, config.data.channels), jnp.uint8, sharding=spec),
         "skipped": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=spec)}
  out.update({k: jax.ShapeDtypeStruct((b, *shape), jnp.int32, sharding=spec) for k, shape in shapes.items()})
  return out


_CACHE_HITS = []  # persistent compilation cache hits, counted by a jax.monitoring listener
jax.monitoring.register_event_listener(
    lambda event, **_: _CACHE_HITS.append(1) if event == "/jax/compilation_cache/cache_hits" else None)


def use_compilation_cache(config, workdir: str) -> str | None:
  """Turns on JAX's persistent compilation cache in compilation_cache ('workdir': WORKDIR/compilation_cache; a
  path, gs:// allowed; '': off) for programs that took >= 1 s to compile: a restarted run reads its train step
  back instead of compiling it. Returns the folder."""
  from jax.experimental.compilation_cache import compilation_cache
  where = str(config.compilation_cache)
  if not where:
    return None
  path = storage.join(workdir, "compilation_cache") if where == "workdir" else where
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compilation_cache.reset_cache()  # an earlier run in this process may have used another folder
  return path


def compile_steps(train_step, config, sampler, mesh, abstract_state, say=None) -> tuple[int, float, int]:
  """Compiles the step for every batch shape it will see (each context bucket) before step 1, so no step
  waits on the compiler mid-run; the jitted step then reuses these programs. Returns (programs, seconds,
  persistent cache hits)."""
  buckets = data.context_buckets(config.mask, sampler) or (None,)
  start, hits = time.perf_counter(), len(_CACHE_HITS)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    for i, length in enumerate(buckets):
      if say and len(buckets) > 1:
        say(f"Compiling the train step for contexts of {length} tokens ({i + 1} of {len(buckets)}) ...")
      train_step.lower(abstract_state, abstract_batch(config, sampler, mesh, length)).compile()
  return len(buckets), time.perf_counter() - start, len(_CACHE_HITS) - hits


def run_step(train_step, mesh, config, state, batch):
  """Calls the jitted step with the mesh and the logical rules in scope (needed while tracing)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    return train_step(state, batch)


# ============================================================================ schedule lengths
def schedule_lengths(config, num_examples: int) -> tuple[int, int]:
  steps_per_epoch = num_examples // config.batch_size
  if config.total_steps > 0:
    total = int(config.total_steps)
  else:
    if steps_per_epoch == 0:
      raise ConfigError(f"batch_size={config.batch_size} is larger than the {num_examples} training examples: "
                        f"lower --config.batch_size.")
    total = int(config.num_epochs * steps_per_epoch)
  warmup = int(config.warmup_steps) if config.warmup_steps >= 0 else int(config.warmup_epochs * steps_per_epoch)
  return total, min(warmup, total)


# ============================================================================ data order
def data_position(config, num_examples: int, step: int) -> dict:
  """What a checkpoint records of the data: the global step and what the global data order depends on."""
  return {"step": step, "batch_size": int(config.batch_size), "seed": int(config.seed), "num_examples": num_examples}


def check_data_order(config, item: dict, num_examples: int, step: int) -> None:
  """A resumed run continues the checkpointed run's data order; one that would not is an error unless
  data.accept_new_order (then the data continue as a run started with this config would at `step`)."""
  saved = item.get("position")
  if saved:
    now = data_position(config, num_examples, step)
    differ = [f"{k} {saved.get(k)} -> {now[k]}" for k in ("batch_size", "seed", "num_examples")
              if saved.get(k) != now[k]]
    why = "its " + ", ".join(differ)
  elif item.get("iterator"):   # written before the data position was global (per-process grain iterators)
    differ, why = True, "it was written by an older version whose data order depended on the process count"
  else:                        # an imported checkpoint (ijepa_jax.convert): no data position yet
    differ = []
  if differ and not config.data.accept_new_order:
    raise ConfigError(
        f"the checkpoint at step {step} was written with another data order ({why}): resuming would not see "
        f"the batches the run would have seen. Resume with the checkpoint's values, or accept a new data order "
        f"with --config.data.accept_new_order=True (the data then continue as a run started with this config "
        f"would at step {step}).")


# ============================================================================ the loop
def _diverged(step: int) -> str:
  return (f"the loss or the gradients are not finite at step {step}; the last checkpoint is intact "
          f"(lower optim.lr, or set --config.skip_nonfinite_steps=True to skip such steps).")


def _say(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  check_config(config)
  # Before any data is read or any step compiled: the workdir (local or gs://) can hold checkpoints.
  storage.check_writable(workdir, probe_name=f".write_test_{jax.process_index()}")
  cache_dir = use_compilation_cache(config, workdir)

  # -- mesh
  mesh = sharding.make_mesh(config.mesh, dcn_cfg=config.mesh_dcn)

  # -- masks and the data source (listed once per host)
  grid = config.data.image_size // config.model.patch_size
  sampler = make_sampler(config.mask, grid)
  check_processes(config, sampler, jax.process_count(), mesh.size)
  source = data.make_source(config, config.data.split)
  num_examples = len(source)
  total_steps, warmup_steps = schedule_lengths(config, num_examples)

  # -- model, sharded state, step
  encoder, abstract_state, init, train_step = build(config, mesh, sampler, total_steps, warmup_steps)
  manager = checkpoint.make_manager(workdir, config.keep_checkpoints, config.checkpoint_every)
  restored = checkpoint.restore_latest(manager, workdir, abstract_state, report=_say)
  if restored is not None:
    latest, state, data_item = restored
    check_data_order(config, data_item, num_examples, int(state.step))
    resumed = f"Resumed from {checkpoint.checkpoint_dir(workdir)}/{latest} (step {int(state.step)})."
  else:
    state, resumed = init(), None
    if jax.process_index() == 0:
      storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  # -- data: the global batches from the state's step on, this process's rows of each
  iterator = iter(data.make_pretrain_dataset(config, sampler, sharding.process_rows(mesh, config.batch_size),
                                             int(state.step), source=source))
  writer = metrics.MetricWriter(workdir, total_steps, start_step=int(state.step))
  if resumed:
    writer.message(resumed)
  writer.message(
      f"I-JEPA: {total_steps} steps of {config.batch_size} images on mesh {dict(mesh.shape)}; "
      f"{grid}x{grid} patches, context {sampler.num_context} tokens, "
      f"{sampler.num_targets} targets x {sampler.num_target} tokens"
      + (f" (padded: the release's counts, per {sampler.shard_size} images)." if sampler.counts == "release"
         else "."))

  programs, seconds, hits = compile_steps(train_step, config, sampler, mesh, abstract_state, writer.message)
  writer.message(f"Train step compiled for {programs} batch shape(s) in {seconds:.0f} s"
                 + (f" ({hits} read from the compilation cache in {cache_dir})." if cache_dir else "."))

  schedules = optim.make_schedules(config.optim, total_steps, warmup_steps)
  start = int(state.step)
  stop = total_steps if config.run_steps <= 0 else min(total_steps, start + config.run_steps)
  monitor = None
  if config.probe.monitor_every > 0 and jax.process_count() == 1:
    monitor = Monitor(config, encoder, mesh)
  timer = metrics.Timer()
  input_bound = metrics.InputBoundWarning(config.data.num_workers)
  pending, skipped, nonfinite, data_wait, cut = [], 0.0, 0, 0.0, 0.0
  try:
    with preemption.StopRequest(every=config.log_every) as stop_request:
      for step in range(start, stop):
        # Steps are dispatched asynchronously, so time spent here is time the host could not hand the
        # device its next batch: near 0 when prefetch keeps ahead, the whole step when data is the limit.
        t = time.perf_counter()
        batch = next(iterator)
        data_wait += time.perf_counter() - t
        state, m = run_step(train_step, mesh, config, state, sharding.global_batch(batch, mesh))
        pending.append(m)
        done = step + 1
        if done % config.log_every == 0 or done == stop:
          # 'loss' is this step's loss, so a resumed run logs exactly what an uninterrupted one does;
          # 'loss_window' averages the steps since the previous log line of this invocation.
          row = {k: float(v) for k, v in pending[-1].items()
                 if k not in ("skipped_images", "nonfinite", "context_tokens_cut")}
          seconds = timer.lap()  # after float(): the steps (dispatched asynchronously) have finished
          skipped += sum(float(x["skipped_images"]) for x in pending)
          bad = [done - len(pending) + 1 + i for i, x in enumerate(pending) if int(x["nonfinite"])]
          nonfinite += len(bad)
          if "context_tokens_cut" in pending[-1]:   # mask.counts=release under a num_context cap: run total
            cut += sum(float(x["context_tokens_cut"]) for x in pending)
            row["context_tokens_cut"] = cut
          row.update(loss_window=float(np.mean([float(x["loss"]) for x in pending])),
                     lr=float(schedules.lr(step)), wd=float(schedules.weight_decay(step)),
                     momentum=float(schedules.momentum(step)),
                     images_per_sec=len(pending) * config.batch_size / seconds, skipped_images=skipped,
                     nonfinite_steps=nonfinite, data_wait_ms=1e3 * data_wait / len(pending),
                     data_wait_fraction=min(data_wait / seconds, 1.0))
          if monitor is not None and done % config.probe.monitor_every == 0:
            row["knn_monitor"] = monitor(state.target)
            timer.lap()  # the probe's time is not training time
          writer.write(done, row)
          writer.progress(done, row, seconds / len(pending))
          if warning := input_bound.update(row["data_wait_fraction"]):
            writer.message(warning)
          data_wait = 0.0
          if bad and not config.skip_nonfinite_steps:
            raise FloatingPointError(_diverged(bad[0]))
          checkpoint.wait(manager, block=False)  # a failed background save stops the run here
          pending = []
        preempted = stop_request.should_stop(done)
        if done % config.checkpoint_every == 0 or done == stop or preempted:
          if int(m["nonfinite"]) and not config.skip_nonfinite_steps:  # never save a broken state
            raise FloatingPointError(_diverged(done))
          writer.flush()  # the metrics up to this checkpoint are durable with it (gs:// included)
          checkpoint.save(manager, done, state, data_position(config, num_examples, done),
                          force=done == stop or preempted)
        if preempted:
          break
  finally:  # pending saves complete even when the run stops on an error: checkpoints stay whole
    checkpoint.wait(manager)
  compiles = len(train_step.programs)
  at = int(state.step)
  if at == total_steps:
    where = "Finished"
  elif at < stop:  # a signal here or on another process
    where = f"Stopped by {stop_request.name}"
  else:
    where = "Stopped (run_steps)"
  again = "" if at == total_steps else " Re-run the same command to continue."
  writer.message(f"{where} at step {at} of {total_steps}; train step compiled {compiles} time(s); "
                 f"checkpoints in {checkpoint.checkpoint_dir(workdir)}.{again}")
  if skipped or nonfinite:
    writer.message(f"Data and numerics in this invocation: {int(skipped)} undecodable image(s) replaced by the "
                   f"next file (their names are in the log); {nonfinite} step(s) with a non-finite loss or "
                   f"gradient skipped.")

  results = {}
  if config.probe.enabled and at == total_steps:
    initial = state_lib.initial_encoder_params(config, encoder) if config.probe.random_init_baseline else None
    results = probes.run(config, encoder, state.target, initial, mesh, workdir, step=at)
  if config.write_plots and at == total_steps and jax.process_index() == 0:
    _write_plots(config, sampler, workdir, source)
  manager.close()
  writer.close()
  return {"state": state, "compiles": compiles, **results}


def _write_plots(config, sampler, workdir: str, source) -> None:
  from ijepa_jax import plots
  images, _ = data.load_eval_arrays(config, config.data.split, 6, source)  # the split it was trained on
  masks = dataclasses.replace(sampler, shard_size=0)(np.random.default_rng(config.seed), len(images))  # one shard
  written = plots.write_run_plots(workdir, images, masks, config.data.image_size // config.model.patch_size)
  print(f"Plots: {', '.join(os.path.basename(p) for p in written)} in {workdir}.", flush=True)
