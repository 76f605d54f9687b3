"""A Cloud Storage emulator for the tests: gcp-storage-emulator's JSON API server, plus the two parts of
the real API that tensorstore (Orbax's array writer) relies on and that emulator leaves out:

- object downloads carry `x-goog-generation` / `x-goog-metageneration` headers (tensorstore reads an
  object's generation from them; without them it reports "Malformed StorageGeneration");
- the generation preconditions `ifGenerationMatch` / `ifGenerationNotMatch` on downloads (412 / 304)
  and `ifGenerationMatch` on single-request uploads (412; 0 = the object must not exist), which
  tensorstore's OCDBT manifest commits use;
- suffix byte ranges on downloads (`Range: bytes=-N`, the last N bytes), with which array_record's reader
  (google-cloud-cpp) reads a shard's footer.

Both follow https://cloud.google.com/storage/docs/json_api (request preconditions, object headers).
Nothing of ijepa_jax is replaced: its storage clients (gcsfs and tensorstore) talk HTTP to this server.

  python tests/gcs_emulator.py --port=PORT --bucket=NAME [--latency_ms=MS]

--latency_ms (for benchmarks, experiments/data_sources.py): every request waits this long before it is
served, and requests are served concurrently (one thread each), as a real bucket serves a host's many
readers: the per-request latency of Cloud Storage without its bandwidth limits.
"""
import argparse
import http.server
import re
import time
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _current(request, storage):
  try:
    return storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    return None


def _query(request, name):
  values = request.query.get(name)
  return values[0] if values else None


def download(request, response, storage, *args, **kwargs):
  obj = _current(request, storage)
  suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", request.get_header("range", "") or "")
  if obj is not None and suffix:   # the emulator serves bytes=START-[END] only: turn the suffix into that form
    headers = request._request_handler.headers   # pylint: disable=protected-access
    del headers["range"]
    headers["Range"] = f"bytes={max(0, int(obj['size']) - int(suffix.group(1)))}-"
  if obj is not None:
    generation = str(obj["generation"])
    response["x-goog-generation"] = generation
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    match, not_match = _query(request, "ifGenerationMatch"), _query(request, "ifGenerationNotMatch")
    if match is not None and match != generation:
      response.status = HTTPStatus.PRECONDITION_FAILED
      return
    if not_match is not None and not_match == generation:
      response.status = HTTPStatus.NOT_MODIFIED
      return
  elif _query(request, "ifGenerationMatch") not in (None, "0"):
    response.status = HTTPStatus.PRECONDITION_FAILED
    return
  objects.download(request, response, storage, *args, **kwargs)


def get(request, response, storage, *args, **kwargs):
  if _query(request, "alt") == "media":  # the JSON API's own download form (tensorstore uses it)
    return download(request, response, storage, *args, **kwargs)
  return objects.get(request, response, storage, *args, **kwargs)


def insert(request, response, storage, *args, **kwargs):
  match = _query(request, "ifGenerationMatch")
  name = _query(request, "name")
  if match is not None and name is not None and _query(request, "uploadType") in ("media", "multipart"):
    try:
      generation = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
    except NotFound:
      generation = "0"
    if match != generation:
      response.status = HTTPStatus.PRECONDITION_FAILED
      return
  objects.insert(request, response, storage, *args, **kwargs)


def _add_latency(seconds: float):
  handler = server.RequestHandler
  for method in ("do_GET", "do_POST", "do_PUT", "do_DELETE", "do_PATCH"):
    def delayed(self, _served=getattr(handler, method)):
      time.sleep(seconds)
      return _served(self)
    setattr(handler, method, delayed)
  server.server.HTTPServer = _ConcurrentServer   # the emulator's APIThread builds its server from this name


class _ConcurrentServer(http.server.ThreadingHTTPServer):
  request_queue_size = 256   # a host's many readers connect at once (the default backlog of 5 drops SYNs)
  daemon_threads = True


def _install():
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is objects.download:
        handlers[method] = download
      elif handler is objects.get:
        handlers[method] = get
      elif handler is objects.insert:
        handlers[method] = insert


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--bucket", required=True)
  parser.add_argument("--latency_ms", type=float, default=0.0)
  args = parser.parse_args()
  _install()
  if args.latency_ms > 0:
    _add_latency(args.latency_ms / 1000)
  server.create_server("127.0.0.1", args.port, in_memory=True, default_bucket=args.bucket).run()


if __name__ == "__main__":
  main()
