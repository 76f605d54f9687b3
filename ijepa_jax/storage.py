"""Where a run's files live: a local folder or Cloud Storage (gs://bucket/...), through one path library.

Every path a user gives (--workdir, --out, data.path, a checkpoint) goes through `path()`, an
`etils.epath.Path` (the library Orbax writes checkpoints with): local paths are made absolute, gs://
paths are read and written through fsspec's gcsfs and, for checkpoint arrays, tensorstore. Nothing
here or in the modules that call it uses local-only file calls on a user path.

Cloud Storage objects cannot be appended to. `AppendFile` (metrics.jsonl, TensorBoard events) keeps
what it wrote and rewrites the object on `flush()`; the trainer flushes before every checkpoint, so
after a preemption the bucket holds every row up to the checkpoint the run resumes from.

Tests and local development point both clients at an emulator with their documented settings:
STORAGE_EMULATOR_HOST (gcsfs) and TENSORSTORE_GCS_HTTP_URL (tensorstore), e.g. http://127.0.0.1:9023.
"""
from __future__ import annotations

import io
import os
import time

import fsspec
from etils import epath

from ijepa_jax.errors import ConfigError

REMOTE_PREFIXES = ("gs://",)

# gcsfs keeps a folder's listing for the life of the process by default, so a reader polling a live gs:// run (a
# notebook's loading.load_encoder, checkpoint.finished_steps) would never see a later checkpoint. fsspec's
# per-protocol defaults turn that cache off for every gs:// path epath opens (before its first filesystem).
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


def is_remote(p) -> bool:
  return str(p).startswith(REMOTE_PREFIXES)


def path(p) -> epath.Path:
  """The user's path as an epath.Path: gs:// as given, local made absolute (~ expanded)."""
  p = os.fspath(p)
  if is_remote(p):
    return epath.Path(p.rstrip("/"))
  return epath.Path(os.path.abspath(os.path.expanduser(p)))


def join(p, *parts: str) -> str:
  return os.fspath(path(p).joinpath(*parts))


def bucket(p) -> str:
  return str(p).split("://", 1)[1].split("/", 1)[0]


# ============================================================================ access checks
def _gcs_hint() -> str:
  return ("On a Cloud TPU VM the VM's service account is used: give it roles/storage.objectAdmin on the "
          "bucket; elsewhere run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
          "to a service-account key file")


def check_credentials(p) -> None:
  """ConfigError naming the fix when gs:// is used without Google Cloud credentials (none are needed
  for an emulator: STORAGE_EMULATOR_HOST)."""
  if not is_remote(p) or os.environ.get("STORAGE_EMULATOR_HOST"):
    return
  import google.auth  # gcsfs's own dependency
  from google.auth import exceptions
  try:
    google.auth.default()
  except exceptions.DefaultCredentialsError as e:
    first = " ".join(str(e).split())[:200]
    raise ConfigError(f"no Google Cloud credentials to read or write {p} ({first}). {_gcs_hint()}.") from None


def _check_bucket(p, what: str) -> None:
  root = epath.Path(f"gs://{bucket(p)}")
  try:
    exists = root.exists()
  except OSError as e:
    raise ConfigError(f"cannot reach bucket {root} for {what}={p}: {_short(e)}. {_gcs_hint()}.") from None
  if not exists:
    raise ConfigError(f"bucket {root} does not exist ({what}={p}): create it with `gcloud storage buckets "
                      f"create {root} --location=REGION` (the TPU's region) or fix {what}.")


def check_readable(p, what: str) -> epath.Path:
  """The path, after a clear error if its bucket is missing or credentials are absent (gs:// only)."""
  if is_remote(p):
    check_credentials(p)
    _check_bucket(p, what)
  return path(p)


def check_writable(directory, what: str = "--workdir", probe_name: str = ".write_test") -> epath.Path:
  """Creates `directory` and writes and deletes one small file in it: a clear ConfigError (naming the
  fix) before any data is read or any step compiled, if it cannot hold the run's files."""
  d = check_readable(directory, what)
  probe = d / probe_name
  try:
    d.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    fix = _gcs_hint() if is_remote(directory) else "Choose a writable directory"
    raise ConfigError(f"cannot write to {what}={directory}: {getattr(e, 'strerror', None) or _short(e)}. "
                      f"{fix}.") from None
  return d


def _short(e: Exception) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:160]}"


# ============================================================================ files
def write_bytes(p, data: bytes) -> None:
  """Whole-file write that readers never see half-done: a temporary name renamed over the target
  locally; on Cloud Storage an upload is atomic by itself. Creates missing parent folders."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    p.write_bytes(data)
    return
  tmp = p.with_name(p.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, p)


def write_text(p, text: str) -> None:
  write_bytes(p, text.encode())


def load_npy(p, mmap: bool = False):
  """np.load of a local (memory-mapped if asked) or gs:// .npy file."""
  import numpy as np
  if is_remote(p):
    return np.load(io.BytesIO(path(p).read_bytes()))
  return np.load(os.fspath(path(p)), mmap_mode="r" if mmap else None)


def save_npy(p, array) -> None:
  """np.save through write_bytes: whole or not at all."""
  import numpy as np
  buf = io.BytesIO()
  np.save(buf, array)
  write_bytes(p, buf.getvalue())


def walk_files(directory, follow_links: bool = True):
  """(directory relative to `directory`, sorted file names) for every folder under it, sub-folders in
  sorted order: os.walk locally (following links), the bucket's listing for gs://."""
  if not is_remote(directory):
    top = os.fspath(path(directory))
    for dirpath, dirnames, filenames in os.walk(top, followlinks=follow_links):
      dirnames.sort()
      yield os.path.relpath(dirpath, top), sorted(filenames)
    return
  top = path(directory)
  prefix = os.fspath(top).split("://", 1)[1].rstrip("/")
  for dirpath, dirnames, filenames in top.walk():
    dirnames.sort()
    rel = os.fspath(dirpath).split("://", 1)[-1][len(prefix):].strip("/")
    yield rel or ".", sorted(filenames)


def open_image(p):
  """A file object for Pillow: the local file, or the object's bytes read in one request."""
  if is_remote(p):
    return io.BytesIO(epath.Path(p).read_bytes())
  return open(p, "rb")


class AppendFile:
  """A file only ever appended to (metrics.jsonl, TensorBoard event files).

  Locally an ordinary append-mode file, flushed on `flush()`. On Cloud Storage the object is rewritten
  whole on `flush()` (objects cannot be appended to) and at most every `min_interval_s` on `write()`,
  so a long run does not upload its log at every step."""

  def __init__(self, p, binary: bool = False, keep_existing: bool = True, min_interval_s: float = 60.0):
    self.path = path(p)
    self.remote = is_remote(p)
    self.binary = binary
    self._interval = min_interval_s
    if not self.remote:
      self._f = open(self.path, "ab" if binary else "a", buffering=-1 if binary else 1)
      return
    self._buffer = io.BytesIO()
    if keep_existing and self.path.exists():
      self._buffer.write(self.path.read_bytes())
    self._dirty, self._last = False, time.monotonic()

  def write(self, data) -> None:
    if not self.remote:
      self._f.write(data)
      return
    self._buffer.write(data if self.binary else data.encode())
    self._dirty = True
    if time.monotonic() - self._last >= self._interval:
      self.flush()

  def flush(self) -> None:
    if not self.remote:
      self._f.flush()
      return
    if self._dirty:
      self.path.write_bytes(self._buffer.getvalue())
      self._dirty, self._last = False, time.monotonic()

  def close(self) -> None:
    self.flush()
    if not self.remote:
      self._f.close()


class _TensorBoardFactory:
  """tensorboardX's writer factory for gs:// event files (its own needs google-cloud-storage and
  rewrites the file on every flush without a time limit), through AppendFile."""

  def open(self, p):
    return AppendFile(p, binary=True, keep_existing=False, min_interval_s=120.0)

  def directory_check(self, p):
    pass  # Cloud Storage has no folders to create


def register_tensorboard() -> None:
  from tensorboardX import record_writer
  record_writer.register_writer_factory("gs", _TensorBoardFactory())
