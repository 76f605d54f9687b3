"""Features of a trained encoder for a .npy of images:

  python -m ijepa_jax.extract --checkpoint=WORKDIR --images=X.npy --out=F.npy \
      [--encoder=target|context] [--pool=none|mean] [--layers=last|last4] [--step=N]

Every path may be local or gs://. X is uint8 (normalised with the config's mean/std) or float32 (already normalised), [N, H, W, C] at
the model's resolution. The output is float32 [N, D] (--pool=mean) or [N, tokens, D] (--pool=none);
--layers=last4 concatenates the last 4 blocks' outputs (each through the final LayerNorm): 4D wide.
Batches are split over all local devices. Only the asked-for encoder is read from the checkpoint, and
fewer images than --batch_size make one forward pass of that many (rounded up to the device count).
"""
from __future__ import annotations

import sys

import numpy as np
from absl import app, flags, logging

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir holding config.json and checkpoints/.")
_IMAGES = flags.DEFINE_string("images", None, "A .npy of images [N, H, W, C], uint8 or float32.")
_OUT = flags.DEFINE_string("out", None, "Where to write the float32 features (.npy).")
_ENCODER = flags.DEFINE_enum("encoder", "target", ["target", "context"], "Which encoder.")
_POOL = flags.DEFINE_enum("pool", "mean", ["mean", "none"], "Average-pool the patch tokens or not.")
_LAYERS = flags.DEFINE_enum("layers", "last", ["last", "last4"], "Final output, or the last 4 blocks.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per forward pass at most (over all devices).")
flags.mark_flags_as_required(["checkpoint", "images", "out"])


def main(argv):
  del argv
  import jax
  from ijepa_jax import loading, sharding, storage
  from ijepa_jax.errors import ConfigError
  from ijepa_jax.evaluation import features
  logging.set_verbosity(logging.WARNING)  # no INFO lines from Orbax's restore
  try:
    images = storage.load_npy(storage.check_readable(_IMAGES.value, "--images"), mmap=True)
    # Only the asked-for encoder is read: a ViT-H/14 costs one encoder's memory, not the train state's.
    config, encoder, params, step = loading.load_encoder(_CHECKPOINT.value, _STEP.value, _ENCODER.value,
                                                         devices=jax.local_devices())
    d = config.data
    expected = (d.image_size, d.image_size, d.channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ConfigError(f"{_IMAGES.value} has shape {images.shape}; this model takes [N, {', '.join(map(str, expected))}] "
                        f"(resize the images to {d.image_size} px first).")
    if images.dtype not in (np.uint8, np.float32):
      raise ConfigError(f"{_IMAGES.value} is {images.dtype}: save uint8 (0-255) or normalised float32 images.")
    mesh = sharding.make_mesh(config.mesh, jax.local_devices())
    out = features.extract(encoder, params, np.asarray(images), d.mean, d.std, _BATCH.value, mesh,
                           pool=_POOL.value, layers=_LAYERS.value)
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  storage.save_npy(_OUT.value, out.astype(np.float32))
  print(f"{_OUT.value}: features {out.shape} from the {_ENCODER.value} encoder at step {step}")


if __name__ == "__main__":
  app.run(main)
