"""The ImageNet-VGG16 baseline: mapping files, score mapping, and an end-to-end run on mock VOC data."""
import json
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import metrics as skm

from conftest import default_config
from mlc_jax.eval import baselines
from mlc_jax.errors import UserError
from test_data_tfds import _as_dataset, _write_metadata
from weight_files import random_weights, write_keras_h5

RESOURCES = pathlib.Path(__file__).resolve().parents[1] / "mlc_jax" / "resources"
VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
       "tvmonitor"]


def _imagenet():
  rows = [l.split("\t") for l in (RESOURCES / "imagenet_classes.tsv").read_text().splitlines()[1:]]
  return {int(i): (wnid, name) for i, wnid, name in rows}


@pytest.mark.parametrize("family,count", [("voc", 20), ("coco", 80), ("nus_wide", 81)])
def test_mapping_files_cover_every_label_with_real_classes(family, count):
  doc = json.loads((RESOURCES / f"imagenet_to_{family}.json").read_text())
  mapped, unmapped = set(doc["labels"]), set(doc["unmapped"])
  assert not mapped & unmapped and len(mapped | unmapped) == count
  if family == "voc":
    assert mapped | unmapped == set(VOC)
  imagenet = _imagenet()
  for label, entries in doc["labels"].items():
    assert entries, label
    for index, wnid, name in entries:
      assert imagenet[index] == (wnid, name), (label, index)


def test_voc_mapping_by_hand():
  doc = json.loads((RESOURCES / "imagenet_to_voc.json").read_text())
  indices = {label: {e[0] for e in entries} for label, entries in doc["labels"].items()}
  assert indices["dog"] == set(range(151, 269))  # every dog breed, no wolves or foxes
  assert indices["cat"] == set(range(281, 286))  # domestic cats, not the big cats (286-293)
  assert indices["person"] == {981, 982, 983}    # ballplayer, groom, scuba diver
  assert indices["diningtable"] == {532} and indices["sofa"] == {831}
  assert 21 in indices["bird"]                   # ImageNet's kite is the bird
  assert doc["unmapped"] == []


def test_load_mapping_errors(tmp_path):
  bad_label = tmp_path / "l.json"
  bad_label.write_text(json.dumps({"labels": {"unicorn": [[1, "n01443537", "goldfish"]]}}))
  with pytest.raises(UserError, match="labels the dataset lacks.*unicorn"):
    baselines.load_mapping(bad_label, VOC)
  bad_class = tmp_path / "c.json"
  bad_class.write_text(json.dumps({"labels": {"dog": [[1000, "n99", "x"], [152, "n00000000", "y"]]}}))
  with pytest.raises(UserError, match="2 unknown ImageNet classes"):
    baselines.load_mapping(bad_class, VOC)
  with pytest.raises(UserError, match="not found"):
    baselines.load_mapping(tmp_path / "none.json", VOC)
  groups, unmapped = baselines.load_mapping(RESOURCES / "imagenet_to_voc.json", VOC)
  assert unmapped == [] and sorted(groups) == list(range(20))


def test_map_scores_max_and_sum():
  probs = np.zeros((2, 1000), np.float32)
  probs[0, [3, 5, 7]] = [0.2, 0.5, 0.1]
  probs[1, [3, 9]] = [0.6, 0.3]
  groups = {0: [3, 5], 2: [7, 9]}
  np.testing.assert_allclose(baselines.map_scores(probs, groups, 3, "max"),
                             [[0.5, 0, 0.1], [0.6, 0, 0.3]])
  np.testing.assert_allclose(baselines.map_scores(probs, groups, 3, "sum"),
                             [[0.7, 0, 0.1], [0.6, 0, 0.3]])


def test_baseline_end_to_end_on_mock_voc(tmp_path):
  import jax
  from mlc_jax.data import pipeline, registry
  from mlc_jax.models import vgg, weights as weights_lib
  weights = tmp_path / "vgg16_tiny_top.h5"
  layers = random_weights("vgg16", 1 / 16, top=True)
  layers["predictions"][0] *= 1e-4  # small logits: a spread softmax, so a sum differs from a max
  write_keras_h5(weights, layers, naming="keras2")
  data = tmp_path / "data"
  _write_metadata("voc/2007", str(data))
  config = default_config()
  config.dataset, config.data.data_dir = "voc/2007", str(data)
  config.model.width, config.model.weights = 1 / 16, ""
  config.eval.baseline_weights = str(weights)
  config.eval_batch_size = 4
  workdir = tmp_path / "w"
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data),
                              as_dataset_fn=_as_dataset):
    result = baselines.baseline(config, str(workdir), split="test")
    summed = config.copy_and_resolve_references()
    summed.eval.baseline_reduce = "sum"  # a label's score: the sum of its classes' probabilities
    baselines.baseline(summed, str(tmp_path / "w_sum"), split="test")
    # Independent of the baseline's loop: eager forward of the same file, mapping by hand.
    source = registry.get(config)
    config.image_size = 224
    batches = list(pipeline.batches(source, "test", batch_size=4, train=False, config=config))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  y = np.concatenate([b["labels"][b["mask"]] for b in batches])
  model = vgg.VGG("vgg16", include_top=True, pooling=None, width=1 / 16, image_size=224,
                  preprocessing="caffe")
  weights_lib.load_into(model, weights)
  probs = np.asarray(jax.nn.softmax(model(images), axis=-1))
  mapping = json.loads((RESOURCES / "imagenet_to_voc.json").read_text())["labels"]
  expected = np.stack([probs[:, [e[0] for e in mapping[l]]].max(1) for l in VOC], 1)
  saved = np.load(workdir / "eval/test/baseline/scores.npz")
  np.testing.assert_allclose(saved["scores"], expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(saved["labels"], y)
  expected_sum = np.stack([np.minimum(probs[:, [e[0] for e in mapping[l]]].sum(1), 1) for l in VOC], 1)
  assert (expected_sum > 1.5 * expected).mean() > 0.5  # labels with several classes: sum > max
  np.testing.assert_allclose(np.load(tmp_path / "w_sum/eval/test/baseline/scores.npz")["scores"],
                             expected_sum, rtol=1e-4, atol=1e-7)
  # VOC protocol: a class's difficult-only images (-1) are left out of its AP
  assert (y == -1).any()
  has = (y == 1).any(0)
  ap = [skm.average_precision_score(y[y[:, c] != -1, c], expected[y[:, c] != -1, c])
        for c in np.flatnonzero(has)]
  assert result["mAP"] == pytest.approx(np.mean(ap), abs=1e-5)
  report = (workdir / "eval/test/report.md").read_text()
  assert "## Baseline: ImageNet VGG16 without fine-tuning" in report
  assert "imagenet_to_voc.json" in report and "left out of the means: none" in report
  section = report.split("## Baseline")[1]
  shown = re.search(r"^\| mAP \| ([\d.]+) \|", section, re.M).group(1)
  assert float(shown) == pytest.approx(100 * np.mean(ap), abs=0.006)
  literature = report.split("## Published results")[1].split("## Baseline")[0]
  assert "| HCP | VGG16 over object hypotheses (HCP) | 90.9 |" in literature
  assert "| ML-GCN | ResNet-101, 448 px | 94.0 |" in literature
  assert "arXiv:1406.5726" in literature and "arXiv:1904.03582" in literature
  assert re.search(r"\| \*\*ours, ImageNet VGG16 baseline\*\* \| VGG16[^|]*, \d+ px \| ([\d.]+) \|",
                   literature)


def test_literature_table_cites_and_compares():
  from mlc_jax.eval import literature
  lit = literature.load()
  rows = {r["method"]: r for r in lit["datasets"]["coco/2014"]}
  assert rows["ML-GCN"]["mAP"] == 83.0 and rows["ML-GCN"]["top3"]["OF1"] == 76.7
  assert rows["WARP"]["top3"] == {"CP": 59.3, "CR": 52.5, "CF1": 55.7, "OP": 59.8, "OR": 61.4,
                                  "OF1": 60.7}
  assert {r["method"]: r["mAP"] for r in lit["datasets"]["nus_wide"]} == {
      "KNN": None, "WARP": None, "CNN-RNN": None, "VGG16 baseline": 55.6, "KD-WSD": 60.1,
      "ResNet-SRN": 62.0, "Res-101 GAP": 56.9, "Res-101 GMP": 59.7, "ML-GCN": 62.5, "ASL": 65.2}
  for source in lit["sources"].values():
    assert re.fullmatch(r"\d{4}\.\d{4,5}", source["arxiv"])
  ours = {"mAP": 0.5, **{f"{m}_top3": 0.25 for m in literature.TOP3}}
  table = literature.table("coco/2014", [("ours", ours)])
  # no protocol recorded: our backbone cell is empty; the MAP@10 column is empty for us
  assert ("| **ours** |  | 50.0 |  | 25.0 | 25.0 | 25.0 | 25.0 | 25.0 | 25.0 | exactly 3 labels per "
          "image |") in table
  assert ("| ML-GCN | ResNet-101, 448 px | 83.0 |  | 89.2 / 87.2 | 64.1 / 64.6 | 74.6 / 74.2 | "
          "90.5 / 89.1 | 66.5 / 66.7 | 76.7 / 76.3 | top 3 with probability") in table
  assert "(ours use k=5)" in literature.table("coco/2014", [("ours", ours)], k=5)
  assert literature.table("shapes", [("ours", ours)]) == ""


def test_single_label_source_file_mapped_by_name_on_shapes(shapes_config, tmp_path):
  """A shapes_single-like classifier file (16 named classes, the 8 shapes among them, out of
  order) scored on shapes: each label takes the softmax probability of its namesake class,
  computed here with numpy from the original model's logits; mAP against sklearn."""
  import jax
  from flax import nnx
  from conftest import forward
  from mlc_jax import models
  from mlc_jax.data import pipeline, registry
  from mlc_jax.data.datasets.shapes import SINGLE_CLASSES
  from mlc_jax.models import weights as weights_lib
  names = list(SINGLE_CLASSES[8:]) + list(SINGLE_CLASSES[:8])[::-1]  # namesakes out of order
  config = default_config()
  config.image_size, config.head.hidden = 32, ()
  config.model.update(width=1 / 16, batch_norm=True, weights="", pooling="avg")
  model = models.build_model(config, 16, rngs=nnx.Rngs(3))
  kernel = model.head.predictions.kernel
  kernel.set_value(kernel.get_value() * 30)  # logits spread: a softmax far from uniform
  path = weights_lib.write_keras_h5(
      tmp_path / "source.h5", models.keras_layers(model),
      {"labels": json.dumps(names), "preprocessing": "unit", "arch": "vgg16", "width": 1 / 16,
       "include_top": False, "pooling": "avg", "image_size": 32, "dataset": "shapes_single"})
  cfg = shapes_config.copy_and_resolve_references()
  cfg.eval.baseline_weights = str(path)
  m = baselines.baseline(cfg, tmp_path / "run", split="test")
  saved = np.load(tmp_path / "run" / "eval" / "test" / "baseline" / "scores.npz")
  source = registry.get(cfg)
  batches = list(pipeline.batches(source, "test", batch_size=8, train=False, config=cfg))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  probs = np.asarray(jax.nn.softmax(forward(model, images), axis=-1))
  columns = [names.index(label) for label in source.labels]
  np.testing.assert_allclose(saved["scores"], probs[:, columns], rtol=1e-5, atol=1e-7)
  y = saved["labels"]
  assert m["mAP"] == pytest.approx(np.mean([skm.average_precision_score(y[:, c], probs[:, columns[c]])
                                           for c in range(y.shape[1])]), abs=1e-6)
  doc = json.loads((tmp_path / "run" / "eval" / "test" / "baseline" / "metrics.json").read_text())
  assert doc["meta"]["mapping"] == "by name" and doc["meta"]["unmapped"] == []
  assert doc["meta"]["source"] == "VGG16 pretrained on shapes_single (16 classes, unmodified)"
  report = (tmp_path / "run" / "eval" / "test" / "report.md").read_text()
  assert "## Baseline: VGG16 pretrained on shapes_single (16 classes, unmodified) without" in report


def test_the_baseline_of_another_family_is_its_own_imagenet_classifier(tmp_path):
  """model.arch=efficientnet_lite0 with eval.baseline_weights=efficientnet-lite0: the real ImageNet
  weights (the default cache, filled by make test's demo-inputs) scored on mock VOC, against an
  eager forward of the same weights mapped by hand; the report names the backbone."""
  import jax
  from mlc_jax.data import pipeline, registry
  from mlc_jax.models import lite_weights, weights as weights_lib
  from mlc_jax.models.efficientnet_lite import EfficientNetLite
  data = tmp_path / "data"
  _write_metadata("voc/2007", str(data))
  config = default_config()
  config.dataset, config.data.data_dir = "voc/2007", str(data)
  config.model.arch, config.model.weights = "efficientnet_lite0", ""
  config.eval.baseline_weights = "efficientnet-lite0"
  config.eval_batch_size = 4
  workdir = tmp_path / "w"
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data),
                              as_dataset_fn=_as_dataset):
    baselines.baseline(config, str(workdir), split="test")
    source = registry.get(config)
    config.image_size = 224
    batches = list(pipeline.batches(source, "test", batch_size=4, train=False, config=config))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  model = EfficientNetLite(include_top=True, num_classes=1000, preprocessing="tf")
  weights_lib.load_into(model, lite_weights.path())
  probs = np.asarray(jax.nn.softmax(model(images), axis=-1))
  mapping = json.loads((RESOURCES / "imagenet_to_voc.json").read_text())["labels"]
  expected = np.stack([probs[:, [e[0] for e in mapping[l]]].max(1) for l in VOC], 1)
  saved = np.load(workdir / "eval/test/baseline/scores.npz")
  np.testing.assert_allclose(saved["scores"], expected, rtol=1e-4, atol=1e-7)
  report = (workdir / "eval/test/report.md").read_text()
  assert "EfficientNet-Lite0 (ImageNet, unmodified)" in report
  assert "## Baseline: ImageNet EfficientNet-Lite0 without fine-tuning" in report
