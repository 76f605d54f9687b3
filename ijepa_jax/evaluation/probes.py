"""The probe run: frozen features of the target encoder, of the same encoder at its random init and of raw
pixels, each through the probes asked for (linear, low-shot, k-NN, attentive), written as eval.json and
eval.md. The trainer runs it at the end of a run; `python -m ijepa_jax.evaluate` on a checkpoint.

Features of whole splits are extracted once into float16 shards (evaluation/shards.py, under
<out>/eval_cache/<step>/, resumable). Then one entry point picks the probes by size: train features that fit in
probe.in_memory_gib are read into memory for the full-batch probes (linear.py: L-BFGS; knn.py), larger ones go
through the streamed probes (linear_streamed.py: the paper's LARS protocol over minibatches sharded on the mesh;
knn.knn_streamed over a bank split between processes). The low-shot probe always fits in memory (1% of the labels).
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ijepa_jax import data, sharding, storage
from ijepa_jax.errors import ConfigError
from ijepa_jax.evaluation import attentive, features, knn, linear, linear_streamed, shards
from ijepa_jax.step import normalise

EVALS = ("linear", "lowshot", "knn", "attentive")
TRAINED, INIT, PIXELS = "I-JEPA target encoder", "same encoder at random init", "raw pixels"


def _cached(path: str | None, compute):
  """The array at `path` (local or gs://) if it exists, else compute() saved there (process 0)."""
  if path and storage.path(path).exists():
    return storage.load_npy(path)
  x = compute()
  if path and jax.process_index() == 0:
    storage.save_npy(path, x)
  return x


def _limit(max_examples) -> int | None:
  return None if max_examples is None or max_examples < 0 else int(max_examples)


def _indices(n: int, max_examples) -> np.ndarray:
  """All indices, or probe.max_train / max_test evenly spaced ones (class-balanced for class-sorted sources)."""
  return data.pipeline._eval_indices(n, _limit(max_examples))


def _encoder_featurizer(encoder, params, mean, std):
  """Global uint8 images -> average-pooled last-4-block features [B, 4D] (the last quarter: the last layer)."""
  @jax.jit
  def forward(p, x):
    return features.tokens(encoder, p, normalise(x, mean, std), "last4").astype(jnp.float32).mean(axis=1)
  return lambda x: forward(params, x)


@jax.jit
def _flatten_pixels(x):
  return x.reshape(x.shape[0], -1).astype(jnp.float32) / 255.0


def _on_mesh(params, mesh):
  """The params, with any leaf not already spread over the mesh's devices replicated over them (the random-init
  baseline is made on one device; with several processes the forward pass needs it on all)."""
  devices = set(mesh.devices.flat)
  return jax.tree.map(lambda x: x if set(x.sharding.device_set) == devices else
                      jax.device_put(x, sharding.replicated(mesh)), params)


def extract_features(config, encoder, trained, initial, mesh, cache_dir: str) -> dict:
  """{feature set: (train Shards, test Shards)}: the shards of every feature set (extracted where missing)."""
  pc, d = config.probe, config.data
  size, channels = int(d.image_size), int(d.channels)
  out = {}
  splits = {}
  for split, limit in ((d.split, pc.max_train), (d.eval_split, pc.max_test)):
    source = data.make_source(config, split)
    splits[split] = (source, _indices(len(source), limit))
  dataset = {k: str(d.get(k, "")) for k in ("source", "path", "tfds_name", "tfds_data_dir")}
  jobs = [(tag, name, params, size, _encoder_featurizer(encoder, _on_mesh(params, mesh), d.mean, d.std))
          for name, params, tag in ((TRAINED, trained, "trained"), (INIT, initial, "init")) if params is not None]
  if pc.raw_pixels_baseline:
    side = int(pc.raw_pixels_side)
    jobs.append((f"pixels_{side}", PIXELS, None, side, _flatten_pixels))
  for tag, name, _, side, featurize in jobs:
    pair = []
    for split, (source, indices) in splits.items():
      def make_batches(idx, batch, source=source, side=side):
        return data.make_eval_dataset(source, indices[idx], side, channels, batch)
      directory = storage.join(cache_dir, tag, split)
      shards.write(directory, len(indices), make_batches, (side, side, channels), featurize, mesh,
                   int(pc.batch_size), int(pc.shard_size), int(config.seed),
                   {"split": split, "size": side, "examples_of": len(source), **dataset}, label=f"{tag} {split}")
      pair.append(shards.Shards(directory))
    if tag.startswith("pixels"):
      out[name] = tuple(pair)
      continue
    width = pair[0].width // min(4, encoder.depth)
    out[f"{name}, last layer"] = tuple(s.select(slice(-width, None)) for s in pair)
    if encoder.depth >= 4:
      out[f"{name}, last 4 layers"] = tuple(pair)
  return out


def token_sets(config, encoder, trained, initial, mesh, cache_dir: str | None) -> tuple[dict, np.ndarray, np.ndarray]:
  """The attentive probe's inputs, in memory (small splits only): {name: (train tokens, test tokens)} of the last
  layer (float16), train labels, test labels."""
  pc, d = config.probe, config.data
  train_images, train_y = data.load_eval_arrays(config, d.split, _limit(pc.max_train))
  test_images, test_y = data.load_eval_arrays(config, d.eval_split, _limit(pc.max_test))
  tokens = {}
  for name, params, tag in ((TRAINED, trained, "trained"), (INIT, initial, "init")):
    if params is None:
      continue
    tokens[f"{name}, last layer"] = tuple(
        _cached(cache_dir and storage.join(cache_dir, f"{tag}_tokens_{split}_{len(imgs)}x{d.image_size}.npy"),
                lambda imgs=imgs: features.extract(encoder, params, imgs, d.mean, d.std, pc.batch_size, mesh,
                                                   pool="none").astype(np.float16))
        for split, imgs in (("train", train_images), ("test", test_images)))
  return tokens, train_y, test_y


def raw_pixel_features(config, split: str, max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, side*side*C] float32 in [0, 1], labels): the split's images at probe.raw_pixels_side
  (28: Fashion-MNIST's own pixels), flattened; the raw-pixel baseline every probe reports."""
  raw = config.copy_and_resolve_references()
  raw.data.image_size = config.probe.raw_pixels_side
  images, labels = data.load_eval_arrays(raw, split, max_examples)
  return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels


def check_evals(evals) -> None:
  unknown = set(evals) - set(EVALS)
  if unknown:
    raise ConfigError(f"unknown evaluation(s) {sorted(unknown)}: choose from {','.join(EVALS)}.")


def fits_in_memory(train: shards.Shards, pc) -> bool:
  """Whether the train features (float32) fit in probe.in_memory_gib: the full-batch probes, else the streamed."""
  return train.examples * train.width * 4 <= float(pc.in_memory_gib) * 2**30


def _example_names(config) -> list[str]:
  source = data.make_source(config, config.data.split)
  if not isinstance(source, data.ImageFolder):
    raise ConfigError(f"probe.lowshot_list names files, and {source} has no file names: evaluate on the image "
                      f"folder (--config.data.source=image_folder) or leave probe.lowshot_list empty.")
  return [os.path.basename(source.path(i)) for i in range(len(source))]


def lowshot(train: shards.Shards, test: shards.Shards, pc, names=None, arrays=None) -> dict:
  """The linear probe (in memory: a few percent of the labels) on probe.lowshot_list's files (e.g. SimCLR's
  imagenet_subsets/1percent.txt; names: the train split's file names by source index), else on
  probe.lowshot_fraction of each class drawn with each of probe.lowshot_seeds. Mean and spread of test top-1."""
  labels, index = (arrays[0][1], arrays[0][2]) if arrays else train.labels()
  if pc.lowshot_list:
    wanted = {line.strip() for line in storage.path(pc.lowshot_list).read_text().splitlines() if line.strip()}
    draws = [np.flatnonzero([names[i] in wanted for i in index])]
    if len(draws[0]) < len(wanted):
      raise ConfigError(f"{len(wanted) - len(draws[0])} of the {len(wanted)} files in {pc.lowshot_list} are not in "
                        f"the train split (or not among probe.max_train's examples): check the list and data.path.")
    seeds = (0,)
  else:
    seeds = tuple(pc.lowshot_seeds)
    draws = [linear.balanced_draw(labels, pc.lowshot_fraction, s) for s in seeds]
  test_batches = [arrays[1][:2]] if arrays else [test.load(i)[:2] for i in range(test.num_shards)] \
      if test.examples <= 200_000 else None
  num_classes = int(labels.max()) + 1
  tops = []
  for seed, rows in zip(seeds, draws):
    x = arrays[0][0][rows] if arrays else _gather(train, rows)
    model = linear.fit(x, labels[rows], pc.weight_decays, seed, pc.standardise, num_classes)
    batches = test_batches if test_batches is not None else (test.load(i)[:2] for i in range(test.num_shards))
    correct = sum(int(np.sum(linear.predict(model, bx) == by)) for bx, by in batches)
    tops.append(correct / test.examples)
  return {"top1": float(np.mean(tops)), "std": float(np.std(tops)), "draws": tops, "examples": int(len(draws[-1])),
          "subset": str(pc.lowshot_list) or f"{pc.lowshot_fraction:g} of each class"}


def _gather(train: shards.Shards, positions: np.ndarray) -> np.ndarray:
  """Features at the given positions of the shards' order, reading one shard at a time."""
  size = int(train.manifest["shard_size"])
  order = np.argsort(positions, kind="stable")
  out = np.empty((len(positions), train.width), np.float32)
  for shard in np.unique(positions // size):
    sel = order[(positions[order] // size) == shard]
    out[sel] = train.load(int(shard))[0][positions[sel] - shard * size]
  return out


def probes(sets: dict, evals, pc, seed: int, mesh=None, tokens: dict | None = None, names=None, say=None) -> dict:
  """{feature set: {eval: result}} for every feature set {name: (train Shards, test Shards)} and requested
  eval; the full-batch probes where the train features fit in memory, else the streamed ones. tokens:
  {name: (train tokens, test tokens, train labels, test labels)} for the attentive probe. `say(line)`, if
  given, hears each result as it is ready."""
  check_evals(evals)
  table = {}
  for name, (tr, te) in sets.items():
    small = fits_in_memory(tr, pc)
    if not small and "attentive" in evals and name in (tokens or {}):
      raise ConfigError(f"the attentive probe reads every patch token into memory, and {tr.examples} examples do not "
                        f"fit in probe.in_memory_gib={pc.in_memory_gib}: leave it out of --eval, or set "
                        f"--config.probe.max_train.")
    arrays = None
    if small and set(evals) & {"linear", "lowshot", "knn"}:
      arrays = (tr.arrays(), te.arrays()[:2])
    row = {}
    todo = {
        "attentive": lambda: attentive.probe(tokens[name][0], tokens[name][2], tokens[name][1], tokens[name][3],
                                             pc.attentive_lrs, pc.attentive_weight_decays, pc.attentive_epochs,
                                             seed=seed),
        "linear": lambda: (linear.probe(arrays[0][0], arrays[0][1], arrays[1][0], arrays[1][1], pc.weight_decays,
                                        seed, pc.standardise) if small else
                           linear_streamed.probe(tr, te, pc, mesh, seed)),
        "lowshot": lambda: lowshot(tr, te, pc, names, arrays),
        "knn": lambda: (knn.knn(arrays[0][0], arrays[0][1], arrays[1][0], arrays[1][1], pc.knn_k, pc.knn_temperature)
                        if small else knn.knn_streamed(tr, te, pc.knn_k, pc.knn_temperature)),
    }
    for ev, compute in todo.items():
      if ev not in evals or (ev == "attentive" and name not in (tokens or {})):
        continue
      start = time.perf_counter()
      row[ev] = {**compute(), "path": "in memory" if small or ev == "lowshot" else "streamed"}
      if say:
        say(f"  {ev:9s} {name}: {100 * row[ev]['top1']:.2f} ({time.perf_counter() - start:.0f} s, "
            f"{row[ev]['path']})")
    table[name] = row
  return table


def markdown(table: dict, evals, pc, train_examples: int, step: int | None) -> str:
  lowshot = (f"low-shot ({os.path.basename(str(pc.lowshot_list))})" if pc.get("lowshot_list") else
             f"{100 * pc.lowshot_fraction:g}% labels ({len(pc.lowshot_seeds)} draws)")
  heads = {"linear": "linear", "lowshot": lowshot,
           "knn": f"k-NN (k={pc.knn_k})", "attentive": "attentive"}
  cols = [e for e in EVALS if e in evals]
  streamed = any(r.get("path") == "streamed" for row in table.values() for k, r in row.items() if k == "linear")
  how = ("the paper's LARS protocol on minibatches streamed from the feature shards, learning rate and weight "
         "decay chosen on held-out train" if streamed else "logistic regression, penalty chosen on held-out train")
  lines = [f"Frozen features{'' if step is None else f' at step {step}'}, test top-1 "
           f"({train_examples} train examples; linear: {how}, on "
           f"{'standardised' if pc.standardise else 'raw'} features):",
           "", "| features | " + " | ".join(heads[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]
  for name, row in table.items():
    cells = []
    for c in cols:
      r = row.get(c)
      if r is None:  # the attentive probe reads the last layer's tokens only
        cells.append("–")
        continue
      cells.append(f"{100 * r['top1']:.2f}" + (f" ± {100 * r['std']:.2f}" if c == "lowshot" else ""))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run(config, encoder, trained, initial, mesh, workdir: str, evals=None, step: int | None = None) -> dict:
  """Runs the probes, writes eval.json / eval.md in workdir, prints the table; returns eval.json's dict. The
  features are extracted over `mesh` (every process feeding its rows) into workdir/eval_cache/<step>/."""
  pc = config.probe
  evals = tuple(pc.evals) if evals is None else tuple(evals)
  check_evals(evals)
  cache = storage.join(workdir, "eval_cache", "latest" if step is None else str(step))
  say = (lambda line: print(line, flush=True)) if jax.process_index() == 0 else None
  start = time.perf_counter()
  sets = extract_features(config, encoder, trained, initial, mesh, cache)
  tokens = {}
  if "attentive" in evals:
    token_arrays, train_y, test_y = token_sets(config, encoder, trained, initial, mesh, cache)
    tokens = {k: (*v, train_y, test_y) for k, v in token_arrays.items()}
  names = _example_names(config) if "lowshot" in evals and pc.lowshot_list else None
  train_n, test_n = next(iter(sets.values()))[0].examples, next(iter(sets.values()))[1].examples
  if say:
    say(f"Probes ({', '.join(evals)}) on {train_n} train / {test_n} test images; features ready in "
        f"{time.perf_counter() - start:.0f} s:")
  table = probes(sets, evals, pc, config.seed, mesh, tokens, names, say)
  result = {"step": step, "train_examples": int(train_n), "test_examples": int(test_n), "table": table}
  last, last4 = f"{TRAINED}, last layer", f"{TRAINED}, last 4 layers"
  for key, name, ev in (("linear_top1", last, "linear"), ("linear_last4_top1", last4, "linear"),
                        ("lowshot_top1", last, "lowshot"), ("knn_top1", last, "knn"),
                        ("attentive_top1", last, "attentive"),
                        ("raw_pixels_top1", PIXELS, "linear")):
    if ev in table.get(name, {}):
      result[key] = table[name][ev]["top1"]
  text = markdown(table, evals, pc, train_n, step)
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, "eval.json"), json.dumps(result, indent=2))
    storage.write_text(storage.join(workdir, "eval.md"), text)
    print("\n" + text, flush=True)
  return result
