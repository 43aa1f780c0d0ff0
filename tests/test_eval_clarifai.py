"""The Clarifai client against a local HTTP server that answers in Clarifai's v2 format."""
import base64
import http.server
import json
import threading

import numpy as np
import pytest

from mlc_jax.eval import clarifai, prediction_files as predictions
from mlc_jax.errors import UserError

GOOD_KEY = "good-key"


class FakeClarifai(http.server.BaseHTTPRequestHandler):
  """Answers POST /v2/models/<id>/outputs like Clarifai; `script` holds the HTTP codes to send first."""
  script = []
  log = []

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    FakeClarifai.log.append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
    if self.headers["Authorization"] != f"Key {GOOD_KEY}":
      return self._send(401, {"status": {"code": 11008, "description": "Invalid API key"}})
    if FakeClarifai.script:
      code = FakeClarifai.script.pop(0)
      return self._send(code, {"status": {"code": 11005 if code == 429 else 21317,
                                          "description": "Making too many requests"}})
    outputs = []
    for item in body["inputs"]:
      image = base64.b64decode(item["data"]["image"]["base64"])
      # The fake "recognises" the tag written in the image bytes.
      tag = image.decode()
      outputs.append({"status": {"code": 10000}, "data": {"concepts": [
          {"id": "ai_1", "name": tag, "value": 0.9, "app_id": "main"},
          {"id": "ai_2", "name": "no person", "value": 0.4, "app_id": "main"}]}})
    self._send(200, {"status": {"code": 10000, "description": "Ok"}, "outputs": outputs})

  def _send(self, code, payload):
    data = json.dumps(payload).encode()
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  FakeClarifai.script, FakeClarifai.log = [], []
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeClarifai)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def _images(tmp_path, tags):
  paths = []
  for i, tag in enumerate(tags):
    p = tmp_path / f"{i:03d}.jpg"
    p.write_bytes(tag.encode())
    paths.append(p)
  return paths


def test_success_writes_a_predictions_file_and_caches(server, tmp_path):
  sleeps = []
  client = clarifai.Client(GOOD_KEY, base_url=server, cache_dir=tmp_path / "cache",
                           sleep=sleeps.append, requests_per_second=1000)
  paths = _images(tmp_path, ["dog", "cat", "airplane"])
  out = tmp_path / "pred.jsonl"
  assert clarifai.predict_files(paths, out, client, batch_size=2) == 3
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["filename"] for r in rows] == ["000.jpg", "001.jpg", "002.jpg"]
  assert rows[0]["scores"] == {"dog": 0.9, "no person": 0.4}
  assert client.requests == 2 and len(FakeClarifai.log) == 2
  assert FakeClarifai.log[0]["path"] == "/v2/models/general-image-recognition/outputs"
  assert FakeClarifai.log[0]["body"]["user_app_id"] == {"user_id": "clarifai", "app_id": "main"}
  # Second run: every answer from the disk cache, no request.
  again = clarifai.Client(GOOD_KEY, base_url=server, cache_dir=tmp_path / "cache", sleep=sleeps.append)
  clarifai.predict_files(paths, tmp_path / "again.jsonl", again)
  assert again.requests == 0 and (tmp_path / "again.jsonl").read_text() == out.read_text()
  # The file scores through the predictions path: synonyms map airplane -> aeroplane; the
  # 'no person' tag is ignored on request.
  labels = ["aeroplane", "cat", "dog", "person"]
  scores = predictions.read(out, labels, ["000.jpg", "001.jpg", "002.jpg"],
                            synonyms=predictions.read_synonyms()[0], unknown_tags="ignore")
  np.testing.assert_allclose(scores, [[0, 0, .9, 0], [0, .9, 0, 0], [.9, 0, 0, 0]])


def test_429_then_success_backs_off(server, tmp_path):
  FakeClarifai.script = [429, 503]
  sleeps = []
  client = clarifai.Client(GOOD_KEY, base_url=server, cache_dir=None, sleep=sleeps.append,
                           requests_per_second=0, backoff_seconds=0.5)
  assert client.predict([b"dog"]) == [{"dog": 0.9, "no person": 0.4}]
  assert client.requests == 3
  assert sleeps == [0.5, 1.0]  # exponential backoff between the three tries


def test_rate_limit_spaces_requests(server, tmp_path):
  sleeps = []
  client = clarifai.Client(GOOD_KEY, base_url=server, cache_dir=None, sleep=sleeps.append,
                           requests_per_second=2)
  client.predict([b"a"])
  client.predict([b"b"])
  assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.5


def test_gives_up_after_retries(server):
  FakeClarifai.script = [429] * 10
  client = clarifai.Client(GOOD_KEY, base_url=server, cache_dir=None, sleep=lambda s: None,
                           requests_per_second=0, max_retries=2)
  with pytest.raises(UserError, match="429.*after 3 tries"):
    client.predict([b"dog"])


def test_bad_key_is_one_clear_error(server):
  client = clarifai.Client("wrong", base_url=server, cache_dir=None, sleep=lambda s: None)
  with pytest.raises(UserError, match="rejected the API key.*11008.*CLARIFAI_API_KEY"):
    client.predict([b"dog"])
  assert len(FakeClarifai.log) == 1  # not retried


def test_key_from_environment(monkeypatch, server):
  monkeypatch.delenv("CLARIFAI_API_KEY", raising=False)
  with pytest.raises(UserError, match="CLARIFAI_API_KEY"):
    clarifai.Client(base_url=server)
  monkeypatch.setenv("CLARIFAI_API_KEY", GOOD_KEY)
  client = clarifai.Client(base_url=server, cache_dir=None)
  assert client.predict([b"cat"])[0]["cat"] == 0.9


def test_command_line(server, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("CLARIFAI_API_KEY", GOOD_KEY)
  _images(tmp_path, ["dog", "cat"])
  out = tmp_path / "p.jsonl"
  assert clarifai.main([str(tmp_path / "*.jpg"), f"--output={out}", f"--base_url={server}",
                        f"--cache_dir={tmp_path / 'c'}"]) == 0
  assert len(out.read_text().splitlines()) == 2
