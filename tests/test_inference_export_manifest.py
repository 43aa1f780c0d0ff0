"""An export folder is tied together by its manifest.json: serve.py (run without mlc_jax) refuses a
truncated, swapped or edited file, a labels.txt that does not fit the model, or a model file left
by another export, in one line; an export into a folder replaces an earlier export whole."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from conftest import default_config
from mlc_jax import models
from mlc_jax.errors import UserError
from mlc_jax.inference import export
from mlc_jax.inference.classifier import Classifier

LABELS = list("abcde")


def _classifier(seed):
  c = default_config()
  c.model.width, c.image_size, c.head.hidden = 1 / 16, 32, ()
  return Classifier(models.build_model(c, len(LABELS), rngs=nnx.Rngs(seed)), LABELS,
                    image_size=32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """{format: folder} of one model, and a second model's stablehlo export."""
  root = tmp_path_factory.mktemp("exports")
  one, two = _classifier(0), _classifier(1)
  return {"stablehlo": one.export(root / "one_hlo"), "onnx": one.export(root / "one_onnx", "onnx"),
          "other": two.export(root / "two_hlo")}, one


def _copy(folder, to):
  to.mkdir()
  for p in folder.iterdir():
    (to / p.name).write_bytes(p.read_bytes())
  return to


def _serve(folder, *args):
  """python serve.py in folder, without mlc_jax on the path."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, "serve.py", *args], cwd=folder, env=env,
                        capture_output=True, text=True, timeout=120)


def test_manifest_lists_every_file_with_its_digest(exports):
  (folders, _) = exports
  import hashlib
  for fmt in ("stablehlo", "onnx"):
    folder = folders[fmt]
    manifest = json.loads((folder / "manifest.json").read_text())
    names = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == names
    for name, entry in manifest["files"].items():
      data = (folder / name).read_bytes()
      assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["model_format"] == fmt and manifest["labels"] == manifest["output_width"] == 5
    assert export.check(folder) == manifest


@pytest.mark.parametrize("damage", ["truncate params.npz", "truncate inference.jax",
                                    "truncate model.onnx", "swap params.npz", "drop a label",
                                    "stray model.onnx", "no manifest"])
def test_a_damaged_export_is_refused_in_one_line_by_serve(exports, damage, tmp_path):
  folders, _ = exports
  action, name = damage.split(" ", 1)
  folder = _copy(folders["onnx" if damage == "truncate model.onnx" else "stablehlo"], tmp_path / "x")
  if action == "truncate":
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:len(data) // 2])
  elif action == "swap":  # the same shapes, another model's weights
    (folder / name).write_bytes((folders["other"] / name).read_bytes())
  elif damage == "drop a label":
    (folder / "labels.txt").write_text("\n".join(LABELS[:-1]) + "\n")
  elif action == "stray":  # an ONNX export's model left beside a StableHLO one
    (folder / name).write_bytes((folders["onnx"] / name).read_bytes())
  else:
    (folder / "manifest.json").unlink()
  expected = {"truncate": f"{name} is ", "swap": f"{name} is not the file the export wrote",
              "drop": "labels.txt is 8 bytes but the export wrote 10",
              "stray": f"{name} is not part of this stablehlo export",
              "no": "manifest.json is missing"}[action]
  with pytest.raises(UserError, match=expected):
    export.check(folder)
  proc = _serve(folder, "nothing.png")
  assert proc.returncode == 1 and proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr


def test_labels_that_do_not_fit_the_output_width_are_refused(exports, tmp_path):
  folders, _ = exports
  folder = _copy(folders["stablehlo"], tmp_path / "x")
  manifest = json.loads((folder / "manifest.json").read_text())
  manifest["output_width"] = 6  # as if the model had 6 outputs: 5 labels do not fit
  (folder / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(UserError, match=r"labels.txt has 5 labels but the model has 6 outputs"):
    export.check(folder)


def test_an_export_replaces_an_earlier_one_whole(exports, tmp_path):
  folders, clf = exports
  folder = _copy(folders["onnx"], tmp_path / "out")
  clf.export(folder, "stablehlo")  # StableHLO over ONNX: model.onnx must go
  assert not (folder / "model.onnx").exists()
  assert sorted(p.name for p in folder.iterdir()) == sorted(
      p.name for p in folders["stablehlo"].iterdir())
  assert export.check(folder)["model_format"] == "stablehlo"
  assert oct(folder.stat().st_mode & 0o777) == "0o755"
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  np.save(folder / "images.npy", images)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  code = ("import sys; sys.modules['mlc_jax'] = None; import numpy as np, serve; "
          "np.save('out.npy', serve.load('.').predict(np.load('images.npy')))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  np.testing.assert_allclose(np.load(folder / "out.npy"), clf.predict(images), atol=1e-5)
  assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no staging folder left


def test_a_folder_with_other_files_is_refused_and_kept(exports, tmp_path):
  _, clf = exports
  folder = tmp_path / "out"
  folder.mkdir()
  (folder / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match=r"holds files that are not an mlc_jax export \(notes.txt\)"):
    clf.export(folder)
  assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_failed_export_leaves_the_earlier_one_whole(exports, tmp_path, monkeypatch):
  folders, clf = exports
  folder = _copy(folders["onnx"], tmp_path / "out")
  before = {p.name: p.read_bytes() for p in folder.iterdir()}

  def full(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(export, "_manifest", full)
  with pytest.raises(OSError):
    clf.export(folder)
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
  assert [p.name for p in tmp_path.iterdir()] == ["out"]
