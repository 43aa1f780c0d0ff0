"""--mode=export: the exported StableHLO function runs with jax alone, the ONNX graph with
onnxruntime alone, each matching Classifier.predict.

The exported folder is used from a subprocess in which mlc_jax, flax and TensorFlow (and, for
ONNX, jax) cannot be imported at all, so it can only work from the folder's own files.
"""
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

import image_fixtures
import mlc_jax
from mlc_jax import cli
from mlc_jax.data import pixels as images_lib
from mlc_jax.models import weights as weights_lib
from mlc_jax.inference import classifier as classifier_lib, export
from mlc_jax.errors import UserError
from trained_run import split_files, trained_workdir

# Runs inside the export folder; importing any of BLOCKED raises ImportError.
SERVE = """
import sys
BLOCKED = ("mlc_jax", "flax", "tensorflow", "orbax") + (("jax", "jaxlib") if sys.argv[1] == "onnx"
                                                       else ())
for name in BLOCKED:
  sys.modules[name] = None
import numpy as np
import serve
model = serve.load(".")
images = np.load("images.npy")
np.save("out_3.npy", model.predict(images[:3]))
np.save("out_all.npy", model.predict(images, batch_size=4))
if sys.argv[1] == "onnx":  # the graph alone, as README.md calls it
  import onnxruntime
  session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
  np.save("out_call.npy", session.run(None, {"images": images[:4]})[0])
else:
  np.save("out_call.npy", np.asarray(model.function.call(model.params, images[:4])))
top = model.top_k(sys.argv[2:], k=2)
print("TOP", [[label for label, _ in row] for row in top])
import json
names = json.load(open("fixtures.json"))
arrays = {}
for name in names:
  try:
    arrays[name.replace(".", "_")] = model.load("fixtures/" + name)
  except ValueError as e:
    print("REFUSED", e)
np.savez("fixture_arrays.npz", **arrays)
sys.argv = ["serve.py", "--k=2", *["fixtures/" + name for name in names]]
serve.main()
loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None]
assert not loaded, loaded
"""


@pytest.fixture(scope="module", params=["stablehlo", "onnx"])
def exported(shapes_config, tmp_path_factory, request):
  workdir, config = trained_workdir(shapes_config, tmp_path_factory)
  out = tmp_path_factory.mktemp("export") / "model"
  flags = types.SimpleNamespace(output=str(out), which="best", stage=None, format=request.param)
  cli.run("export", None, str(workdir), flags)
  return workdir, config, out


def test_export_folder(exported):
  workdir, config, out = exported
  fmt = json.loads((out / "preprocessing.json").read_text())["format"]
  model = ["inference.jax", "params.npz"] if fmt == "stablehlo" else ["model.onnx"]
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["README.md", "labels.txt", "manifest.json", "preprocessing.json", "serve.py"] + model)
  assert (out / "labels.txt").read_text().split() == (workdir / "labels.txt").read_text().split()
  spec = json.loads((out / "preprocessing.json").read_text())
  assert spec["image_size"] == config.image_size == 32 and spec["resize"] == "plain"
  assert spec["activation"] == "sigmoid" and len(spec["thresholds"]) == 8
  if fmt == "onnx":
    import onnx
    graph = onnx.load(str(out / "model.onnx")).graph
    (images,), (probabilities,) = graph.input, graph.output
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert dims == ["batch", 32, 32, 3]  # symbolic batch, uint8 S x S RGB
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in probabilities.type.tensor_type.shape.dim] == [
        "batch", 8]
    return
  assert "cpu" in spec["platforms"]
  import jax
  function = jax.export.deserialize(bytearray((out / "inference.jax").read_bytes()))
  batch = function.in_avals[-1].shape[0]
  assert not isinstance(batch, int) and str(batch) == "b"  # symbolic: any batch size
  images = function.in_avals[-1]
  assert images.shape[1:] == (32, 32, 3) and str(images.dtype) == "uint8"
  assert function.out_avals[0].shape[1:] == (8,)


def test_exported_function_matches_classifier_with_jax_alone(exported, tmp_path):
  workdir, config, out = exported
  paths, _ = split_files(config, "test", tmp_path / "images", limit=7)
  images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
  np.save(out / "images.npy", images)
  expected, bomb = image_fixtures.write(out / "fixtures", 32)
  names = sorted(expected) + [bomb]
  (out / "fixtures.json").write_text(json.dumps(names))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  fmt = json.loads((out / "preprocessing.json").read_text())["format"]
  proc = subprocess.run([sys.executable, "-c", SERVE, fmt, *paths[:3]], cwd=out, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  classifier = mlc_jax.load(workdir)
  reference = classifier.predict(images)
  for name, rows in (("out_3.npy", 3), ("out_all.npy", 7), ("out_call.npy", 4)):
    got = np.load(out / name)
    assert got.dtype == np.float32 and got.shape == (rows, 8)
    np.testing.assert_allclose(got, reference[:rows], rtol=1e-5, atol=1e-5 if fmt == "stablehlo"
                               else 1e-4)
  top = [[label for label, _ in row] for row in classifier.top_k(paths[:3], k=2)]
  assert f"TOP {top}" in proc.stdout

  # the same file, the same pixels: the server's reader against numpy's truth and the package
  served = np.load(out / "fixture_arrays.npz")
  assert sorted(served.files) == sorted(n.replace(".", "_") for n in expected)
  assert f"REFUSED image fixtures/{bomb}: too large (12000 x 12000" in proc.stdout
  assert f"skipped image fixtures/{bomb}: too large" in proc.stderr  # the CLI predicts the rest
  for name, want in expected.items():
    ours = images_lib.load(out / "fixtures" / name, 32)
    if want.shape[:2] == (32, 32):  # no resize: exactly the truth, on both sides
      np.testing.assert_array_equal(served[name.replace(".", "_")], want, err_msg=name)
      np.testing.assert_array_equal(ours, want, err_msg=name)
    else:  # resized by numpy there and TensorFlow here: one level at most
      assert np.abs(served[name.replace(".", "_")].astype(int) - ours).max() <= 1, name
  np.testing.assert_array_equal(served["exif6_jpg"], served["upright_png"])
  upright = classifier.predict([out / "fixtures" / "exif6.jpg", out / "fixtures" / "upright.png"])
  np.testing.assert_array_equal(upright[0], upright[1])  # the EXIF-6 photo is predicted upright
  lines = {l.split()[0]: l.split()[1:] for l in proc.stdout.splitlines() if l.startswith("fixtures/")}
  assert sorted(lines) == sorted("fixtures/" + n for n in expected)
  assert lines["fixtures/exif6.jpg"] == lines["fixtures/upright.png"]


def test_export_bad_output(exported, tmp_path):
  workdir, _, _ = exported
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="is a file"):
    classifier_lib.export_run(workdir, tmp_path / "file")
  with pytest.raises(UserError, match="not inside a training workdir"):
    classifier_lib.export_run(tmp_path, tmp_path / "out")


def test_export_keras_h5_holds_the_checkpoints_backbone(exported, tmp_path):
  workdir, config, _ = exported
  out = tmp_path / "backbone.h5"
  flags = types.SimpleNamespace(output=str(out), which="best", stage=None, format="keras_h5")
  assert cli.run("export", None, str(workdir), flags) == out
  classifier = mlc_jax.load(workdir)
  params = classifier.params  # the restored checkpoint, read by orbax
  read = weights_lib.read_weights(out)
  assert list(read) == list(classifier.model.backbone.layer_names)  # the head has a hidden layer
  for layer, arrays in read.items():
    for p, array in arrays.items():
      np.testing.assert_array_equal(array, params[f"backbone/{layer}/{p}"], err_msg=f"{layer}/{p}")
  attrs = weights_lib.file_attrs(out)
  assert attrs["preprocessing"] == weights_lib.convention_for(str(out)) == "unit"
  assert attrs["checkpoint"] == classifier.checkpoint and attrs["labels"] == "[]"
  for bad, message in ((tmp_path / "w.txt", "ending .h5"), (tmp_path, "ending .h5")):
    with pytest.raises(UserError, match=message):
      export.export_keras_h5(workdir, bad)
