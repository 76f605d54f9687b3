"""The probe run: frozen features of the target encoder, of the same encoder at its random init and of raw
pixels, each through the probes asked for (linear, low-shot, k-NN, attentive), written as eval.json and
eval.md. The trainer runs it at the end of a run; `python -m ijepa_jax.evaluate` on a checkpoint.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np

from ijepa_jax import data, storage
from ijepa_jax.errors import ConfigError
from ijepa_jax.evaluation import attentive, features, knn, linear

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


def feature_sets(config, encoder, trained, initial, mesh, cache_dir: str | None,
                 evals=()) -> tuple[dict, dict, np.ndarray, np.ndarray]:
  """{name: (train features, test features)}, {name: (train tokens, test tokens)} (the attentive probe's
  inputs, only when it is asked for), train labels, test labels."""
  pc, d = config.probe, config.data
  limit = None if pc.max_train < 0 else int(pc.max_train)
  train_images, train_y = data.load_eval_arrays(config, d.split, limit)
  test_images, test_y = data.load_eval_arrays(config, d.eval_split)
  sets, tokens = {}, {}
  for name, params, tag in ((TRAINED, trained, "trained"), (INIT, initial, "init")):
    if params is None:
      continue
    # The last 4 blocks' pooled outputs, concatenated; the final quarter is the last layer's output.
    pair = [_cached(cache_dir and storage.join(cache_dir, f"{tag}_{split}_{len(imgs)}x{d.image_size}.npy"),
                    lambda imgs=imgs: features.extract(encoder, params, imgs, d.mean, d.std, pc.batch_size, mesh,
                                                       layers="last4"))
            for split, imgs in (("train", train_images), ("test", test_images))]
    width = pair[0].shape[1] // min(4, encoder.depth)
    sets[f"{name}, last layer"] = (pair[0][:, -width:], pair[1][:, -width:])
    if encoder.depth >= 4:
      sets[f"{name}, last 4 layers"] = tuple(pair)
    if "attentive" in evals:  # [N, tokens, D] of the last layer, cached as float16 (half the disk)
      tokens[f"{name}, last layer"] = tuple(
          _cached(cache_dir and storage.join(cache_dir, f"{tag}_tokens_{split}_{len(imgs)}x{d.image_size}.npy"),
                  lambda imgs=imgs: features.extract(encoder, params, imgs, d.mean, d.std, pc.batch_size, mesh,
                                                     pool="none").astype(np.float16))
          for split, imgs in (("train", train_images), ("test", test_images)))
  if pc.raw_pixels_baseline:
    # No attentive row: pixel patches carry no position, so one query over them sees a bag of patches;
    # the linear probe on the whole image is the pixels' floor.
    sets[PIXELS] = tuple(raw_pixel_features(config, split, n)[0]
                         for split, n in ((d.split, limit), (d.eval_split, None)))
  return sets, tokens, train_y, test_y


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


def probes(sets: dict, train_y, test_y, evals, pc, seed: int, tokens: dict | None = None, say=None) -> dict:
  """{feature set: {eval: result}} for every feature set and requested eval (the attentive probe for the
  feature sets that have tokens). `say(line)`, if given, hears each result as it is ready."""
  check_evals(evals)
  table = {}
  for name, (tr, te) in sets.items():
    row = {}
    todo = {
        "attentive": lambda: attentive.probe(tokens[name][0], train_y, tokens[name][1], test_y, pc.attentive_lrs,
                                             pc.attentive_weight_decays, pc.attentive_epochs, seed=seed),
        "linear": lambda: linear.probe(tr, train_y, te, test_y, pc.weight_decays, seed, pc.standardise),
        "lowshot": lambda: linear.lowshot(tr, train_y, te, test_y, pc.weight_decays, pc.lowshot_fraction,
                                          tuple(pc.lowshot_seeds), pc.standardise),
        "knn": lambda: knn.knn(tr, train_y, te, test_y, pc.knn_k, pc.knn_temperature),
    }
    for ev, compute in todo.items():
      if ev not in evals or (ev == "attentive" and name not in (tokens or {})):
        continue
      start = time.perf_counter()
      row[ev] = compute()
      if say:
        say(f"  {ev:9s} {name}: {100 * row[ev]['top1']:.2f} ({time.perf_counter() - start:.0f} s)")
    table[name] = row
  return table


def markdown(table: dict, evals, pc, train_examples: int, step: int | None) -> str:
  heads = {"linear": "linear", "lowshot": f"{100 * pc.lowshot_fraction:g}% labels ({len(pc.lowshot_seeds)} draws)",
           "knn": f"k-NN (k={pc.knn_k})", "attentive": "attentive"}
  cols = [e for e in EVALS if e in evals]
  lines = [f"Frozen features{'' if step is None else f' at step {step}'}, test top-1 "
           f"({train_examples} train examples; linear: logistic regression on "
           f"{'standardised' if pc.standardise else 'raw'} features, penalty chosen on held-out train):",
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
  """Runs the probes, writes eval.json / eval.md in workdir, prints the table; returns eval.json's dict."""
  pc = config.probe
  evals = tuple(pc.evals) if evals is None else tuple(evals)
  check_evals(evals)
  cache = None if step is None else storage.join(workdir, "eval_cache", str(step))
  say = (lambda line: print(line, flush=True)) if jax.process_index() == 0 else None
  start = time.perf_counter()
  sets, tokens, train_y, test_y = feature_sets(config, encoder, trained, initial, mesh, cache, evals)
  if say:
    say(f"Probes ({', '.join(evals)}) on {len(train_y)} train / {len(test_y)} test images; features ready in "
        f"{time.perf_counter() - start:.0f} s:")
  table = probes(sets, train_y, test_y, evals, pc, config.seed, tokens, say)
  result = {"step": step, "train_examples": int(len(train_y)), "test_examples": int(len(test_y)), "table": table}
  last, last4 = f"{TRAINED}, last layer", f"{TRAINED}, last 4 layers"
  for key, name, ev in (("linear_top1", last, "linear"), ("linear_last4_top1", last4, "linear"),
                        ("lowshot_top1", last, "lowshot"), ("knn_top1", last, "knn"),
                        ("attentive_top1", last, "attentive"),
                        ("raw_pixels_top1", PIXELS, "linear")):
    if ev in table.get(name, {}):
      result[key] = table[name][ev]["top1"]
  text = markdown(table, evals, pc, len(train_y), step)
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, "eval.json"), json.dumps(result, indent=2))
    storage.write_text(storage.join(workdir, "eval.md"), text)
    print("\n" + text, flush=True)
  return result
