"""Every backbone family through the whole recipe: features -> head -> finetune -> evaluate ->
predict -> export (StableHLO and ONNX), on the tiny shapes set with a tiny-width network of each
family.

References: the head checkpoint's backbone (what a frozen block must still hold), sklearn's
average precision on the saved scores, an eager forward of the restored model (what the exported
function must return).
"""
import json
import types

import jax
import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

import mlc_jax
from conftest import one_error_line
from mlc_jax import cli, runner
from mlc_jax.data import pipeline, registry
from mlc_jax.models.backbone import block_of

FAMILIES = {"resnet50": dict(width=1 / 16), "efficientnet_lite0": dict(width=1 / 8)}


def _config(shapes_config, arch, width):
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.model.update(arch=arch, width=width, weights="", batch_norm=False, preprocessing="")
  c.stages = ("features", "head", "finetune", "evaluate")
  c.head.epochs, c.head.hidden = 1, (16,)
  c.finetune.epochs, c.finetune.unfreeze_blocks = 1, "1"  # block 5 trains, blocks 1-4 frozen
  c.finetune.batch_norm = "frozen_blocks_inference"
  c.finetune.learning_rate = 1e-2
  return c


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def run(request, shapes_config, tmp_path_factory):
  arch = request.param
  config = _config(shapes_config, arch, **FAMILIES[arch])
  workdir = tmp_path_factory.mktemp(arch)
  runner.train_and_evaluate(config, str(workdir))
  return arch, config, workdir


def test_finetune_trains_the_top_block_only_and_frozen_batch_norm_keeps_its_statistics(run):
  arch, _, workdir = run
  head = mlc_jax.load(workdir, stage="head").params
  tuned = mlc_jax.load(workdir, stage="finetune").params
  assert sorted(head) == sorted(tuned)
  blocks = {block_of(name) for name in head if name.startswith("backbone/")}
  assert blocks == {1, 2, 3, 4, 5}, (arch, blocks)  # every layer of the family sits in a block
  changed = {name for name in head if not np.array_equal(head[name], tuned[name])}
  for name in head:
    block = block_of(name) if name.startswith("backbone/") else None
    if block is not None and block <= 4:
      assert name not in changed, name  # kernels, scales and running statistics alike
  top = [n for n in head if n.startswith("backbone/") and block_of(n) == 5]
  assert any(n in changed for n in top if n.endswith("kernel")), arch
  assert any(n in changed for n in head if n.startswith("head/")), arch


def test_evaluation_is_sklearn_average_precision_of_the_saved_scores(run):
  _, _, workdir = run
  saved = np.load(workdir / "eval/test/scores.npz")
  y, scores = saved["labels"], saved["scores"]
  has = (y == 1).sum(0) > 0
  ap = [skm.average_precision_score(y[:, c], scores[:, c]) for c in np.flatnonzero(has)]
  metrics = json.loads((workdir / "eval/test/metrics.json").read_text())["metrics"]
  assert metrics["mAP"] == pytest.approx(np.mean(ap), abs=1e-6)


@pytest.fixture(scope="module")
def restored(run):
  """(classifier restored from the run, 8 test images, an eager forward's probabilities)."""
  _, config, workdir = run
  source = registry.get(config)
  batch = next(iter(pipeline.batches(source, "test", batch_size=8, train=False, config=config)))
  images = np.asarray(batch["image"])
  classifier = mlc_jax.load(workdir)
  return classifier, images, np.asarray(jax.nn.sigmoid(classifier.model(images)))  # no jit


def test_predict_and_the_stablehlo_export_give_the_restored_models_probabilities(run, restored,
                                                                                 tmp_path):
  arch = run[0]
  classifier, images, reference = restored
  np.testing.assert_allclose(classifier.predict(images), reference, rtol=1e-4, atol=1e-5)
  out = classifier.export(tmp_path / "export")
  import sys
  sys.path.insert(0, str(out))
  try:
    import serve
    served = serve.load(str(out)).predict(images)
  finally:
    sys.path.remove(str(out))
    sys.modules.pop("serve", None)
  np.testing.assert_allclose(served, reference, rtol=1e-4, atol=1e-5, err_msg=arch)


def test_the_onnx_export_gives_the_restored_models_probabilities_and_keras_h5_says_vgg_only(
    run, restored, tmp_path, capsys):
  arch, _, workdir = run
  _, images, reference = restored
  flags = types.SimpleNamespace(output=str(tmp_path / "onnx"), which="best", stage=None,
                                format="onnx")
  cli.run("export", None, str(workdir), flags)
  import onnxruntime
  session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"),
                                         providers=["CPUExecutionProvider"])
  np.testing.assert_allclose(session.run(None, {"images": images})[0], reference, rtol=1e-4,
                             atol=1e-5, err_msg=arch)
  output = tmp_path / "model.h5"
  flags = types.SimpleNamespace(output=str(output), which="best", stage=None, format="keras_h5")
  line = (f"error: --format=keras_h5 writes VGG's Keras layout; this run's backbone is {arch}: "
          "export it with --format=stablehlo")
  assert one_error_line(capsys, lambda: cli.run("export", None, str(workdir), flags)) == line
  assert not output.exists()
