"""A small client for the Clarifai v2 predict API that writes a predictions file (JSON lines).

    CLARIFAI_API_KEY=... python -m mlc_jax.eval.clarifai --output=clarifai.jsonl IMAGE_OR_GLOB ...

then `launch.py --mode=evaluate --workdir=W --predictions=clarifai.jsonl` scores it
(mlc_jax.eval.prediction_files).
Requests are spaced to a rate limit, retried with exponential backoff on 429, 5xx and connection
errors, and every answer is cached on disk by image content, so a rerun costs no requests.
"""
import argparse
import base64
import glob
import hashlib
import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request

from mlc_jax.errors import UserError

API_URL = "https://api.clarifai.com"
KEY_ENV = "CLARIFAI_API_KEY"
SUCCESS = 10000
BAD_KEY = (11008, 11009, 11007)  # invalid key, invalid key/app pair, key without scope
DEFAULT_CACHE = "~/.cache/mlc_jax/clarifai"


class Client:
  """Clarifai v2 `models/{model_id}/outputs` with a key, a rate limit, retries and a disk cache."""

  def __init__(self, api_key=None, *, model_id="general-image-recognition", user_id="clarifai",
               app_id="main", base_url=API_URL, requests_per_second=5.0, max_retries=5,
               backoff_seconds=1.0, cache_dir=DEFAULT_CACHE, timeout=60.0, sleep=time.sleep):
    self.api_key = api_key or os.environ.get(KEY_ENV, "")
    if not self.api_key:
      raise UserError(f"no Clarifai API key: set the environment variable {KEY_ENV} to a personal "
                      "access token (Clarifai portal > Settings > Security)")
    self.model_id, self.user_id, self.app_id = model_id, user_id, app_id
    self.url = f"{base_url.rstrip('/')}/v2/models/{model_id}/outputs"
    self.interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
    self.max_retries, self.backoff, self.timeout, self.sleep = max_retries, backoff_seconds, timeout, sleep
    self.cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir else None
    self.requests = 0  # sent to the server, retries included
    self._last = None

  def _cache_path(self, image_bytes):
    digest = hashlib.sha256(self.model_id.encode() + b"\0" + image_bytes).hexdigest()
    return self.cache_dir / f"{digest}.json"

  def _wait_turn(self):
    # Spaces request starts by at least 1 / requests_per_second.
    if self._last is not None and self.interval:
      delay = self._last + self.interval - time.monotonic()
      if delay > 0:
        self.sleep(delay)
    self._last = time.monotonic()

  def _post(self, body):
    """One request with retries -> the decoded JSON answer (status.code 10000)."""
    data = json.dumps(body).encode()
    for attempt in range(self.max_retries + 1):
      self._wait_turn()
      request = urllib.request.Request(self.url, data=data, method="POST", headers={
          "Authorization": f"Key {self.api_key}", "Content-Type": "application/json"})
      self.requests += 1
      retry_after = None
      try:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
          answer, http = json.loads(response.read() or b"{}"), response.status
      except urllib.error.HTTPError as e:
        http, retry_after = e.code, e.headers.get("Retry-After")
        try:
          answer = json.loads(e.read() or b"{}")
        except ValueError:
          answer = {}
      except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        http, answer = None, {"status": {"description": str(e)}}
      status = answer.get("status", {}) if isinstance(answer, dict) else {}
      code = status.get("code")
      if http in (401, 403) or code in BAD_KEY:
        raise UserError(f"Clarifai rejected the API key (HTTP {http}, status {code}: "
                        f"{status.get('description', '')}); set {KEY_ENV} to a valid personal "
                        "access token with the predict scope")
      if http == 200 and code == SUCCESS:
        return answer
      retryable = http is None or http == 429 or http >= 500
      if not retryable:
        raise UserError(f"Clarifai answered HTTP {http}, status {code}: "
                        f"{status.get('description', '')} {status.get('details', '')}".strip())
      if attempt < self.max_retries:
        wait = self.backoff * 2 ** attempt
        if retry_after and retry_after.isdigit():
          wait = max(wait, float(retry_after))
        self.sleep(wait)
    raise UserError(f"Clarifai still answered HTTP {http} ({status.get('description', '')}) after "
                    f"{self.max_retries + 1} tries; lower requests_per_second or retry later")

  def predict(self, images):
    """Encoded images (list of bytes) -> one {concept name: probability} dict per image."""
    results = [None] * len(images)
    todo = []
    for i, image in enumerate(images):
      path = self._cache_path(image) if self.cache_dir else None
      if path is not None and path.is_file():
        results[i] = json.loads(path.read_text())
      else:
        todo.append(i)
    if todo:
      answer = self._post({
          "user_app_id": {"user_id": self.user_id, "app_id": self.app_id},
          "inputs": [{"data": {"image": {"base64": base64.b64encode(images[i]).decode()}}}
                     for i in todo]})
      outputs = answer.get("outputs", [])
      if len(outputs) != len(todo):
        raise UserError(f"Clarifai answered {len(outputs)} outputs for {len(todo)} images")
      for i, output in zip(todo, outputs):
        concepts = output.get("data", {}).get("concepts", [])
        results[i] = {c["name"]: float(c["value"]) for c in concepts}
        if self.cache_dir:
          self.cache_dir.mkdir(parents=True, exist_ok=True)
          tmp = self._cache_path(images[i]).with_suffix(".tmp")
          tmp.write_text(json.dumps(results[i]))
          os.replace(tmp, self._cache_path(images[i]))  # atomic: a killed run leaves no bad entry
    return results


def predict_files(paths, output, client, *, batch_size=16, root=None):
  """Tags every image file with `client`; writes JSON lines {"filename", "scores"} to `output`.

  filename is the path relative to `root` when given, else the base name (as datasets store them).
  Returns the number of images written.
  """
  paths = [pathlib.Path(p) for p in paths]
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise UserError(f"{len(missing)} image files not found: {', '.join(missing[:5])}")
  output = pathlib.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.with_name(output.name + ".tmp")
  with open(tmp, "w") as f:
    for start in range(0, len(paths), batch_size):
      chunk = paths[start:start + batch_size]
      for path, scores in zip(chunk, client.predict([p.read_bytes() for p in chunk])):
        name = str(path.relative_to(root)) if root else path.name
        f.write(json.dumps({"filename": name, "scores": scores}) + "\n")
  os.replace(tmp, output)
  return len(paths)


def main(argv=None):
  """Command line: tag images with Clarifai and write a predictions file."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("images", nargs="+", help="image files or globs")
  parser.add_argument("--output", required=True, help="predictions file to write (.jsonl)")
  parser.add_argument("--model_id", default="general-image-recognition")
  parser.add_argument("--requests_per_second", type=float, default=5.0)
  parser.add_argument("--cache_dir", default=DEFAULT_CACHE)
  parser.add_argument("--base_url", default=API_URL)
  parser.add_argument("--root", default=None, help="write file names relative to this folder")
  args = parser.parse_args(argv)
  paths = sorted({p for pattern in args.images for p in (glob.glob(pattern) or [pattern])})
  try:
    client = Client(model_id=args.model_id, requests_per_second=args.requests_per_second,
                    cache_dir=args.cache_dir, base_url=args.base_url)
    n = predict_files(paths, args.output, client, root=args.root)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {n} images to {args.output} ({client.requests} requests)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
