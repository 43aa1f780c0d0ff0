"""COCO and VOC through the registry and the pipeline, on TFDS mock data.

tfds.testing.mock_data serves examples we make here (consistent objects, labels and difficult
flags, COCO images without objects, split sizes from metadata we write), so the expected targets
(1 present, 0 absent, -1 unknown) are computed by hand from the raw examples, independently of
mlc_jax, for each protocol and training option.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from conftest import default_config
from mlc_jax import metrics
from mlc_jax.data import pipeline, registry

COUNTS = {"train": 12, "validation": 7, "test": 5}


def _write_metadata(name, data_dir):
  """dataset_info.json with our split sizes, so the Source sees real counts under the mock."""
  b = tfds.builder(name, data_dir=data_dir)
  template = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
  infos = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                               filename_template=tfds.core.ShardedFileTemplate(
                                   data_dir=b.data_dir, template=template, dataset_name=b.name,
                                   split=s, filetype_suffix="tfrecord"))
           for s, n in COUNTS.items()]
  b.info.set_splits(tfds.core.SplitDict(infos))
  os.makedirs(b.data_dir, exist_ok=True)
  b.info.write_to_directory(b.data_dir)


def _example(features, split, index):
  """A consistent fake example: 1-4 objects, sorted boxes, VOC label sets from the objects."""
  rng = np.random.default_rng([len(split), index])
  ex = mocking.RandomFakeGenerator(features, 1, constant_dynamic_shape=True, seed=index)[index]
  # COCO: every third image has no object (the literature drops those); VOC: 1-4 objects
  k = 0 if "labels_no_difficult" not in ex and index % 3 == 1 else int(rng.integers(1, 5))
  objects = {key: value[:k] for key, value in ex["objects"].items()}
  y, x = np.sort(rng.random((k, 2)), 1), np.sort(rng.random((k, 2)), 1)
  objects["bbox"] = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], 1).astype(np.float32)
  ex["objects"] = objects
  if "image/filename" in ex:
    ex["image/filename"] = f"{split}_{index:06d}.jpg"
  if "labels_no_difficult" in ex:
    difficult = objects["is_difficult"]
    ex["labels"] = np.unique(objects["label"])
    ex["labels_no_difficult"] = np.unique(objects["label"][~difficult])
  return ex


def _split_examples(features, split):
  """The examples of a TFDS split string such as 'train[:11]' or 'train+validation[:5]'."""
  out = []
  for part in str(split).split("+"):
    name, _, rest = part.partition("[")
    items = [_example(features, name, i) for i in range(COUNTS[name])]
    if rest:
      start, _, stop = rest.rstrip("]").partition(":")
      items = items[int(start) if start else None:int(stop) if stop else None]
    out += items
  return out


def _as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """Mock of DatasetBuilder._as_dataset honouring split sizes and slices."""
  del read_config, kwargs
  features = self.info.features
  examples = [features.encode_example(ex) for ex in _split_examples(features, split)]
  specs = features.get_serialized_info()
  signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), specs)
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
  return ds.map(lambda e: features.decode_example(e, decoders=decoders))


def _expected(builder, spec, split, protocol="literature", difficult="ignore", keep=False):
  """int8 targets of a split computed by hand from the raw examples, by the rules of the VOC and
  COCO protocols (BUILD.md): VOC difficult-only classes, COCO images without objects."""
  features = builder.info.features
  num_classes = features["objects"]["label"].num_classes
  evaluation = split in ("val", "test")
  rows = []
  for ex in _split_examples(features, spec):
    row = np.zeros(num_classes, np.int8)
    if "labels_no_difficult" in ex:
      row[ex["labels"]] = {"ignore": -1, "positive": 1, "negative": 0}[
          ("ignore" if protocol == "literature" else "positive") if evaluation else difficult]
      row[ex["labels_no_difficult"]] = 1
    else:
      row[ex["objects"]["label"]] = 1
      drop = protocol == "literature" if evaluation else not keep
      if not len(ex["objects"]["label"]) and drop:
        row[:] = -1
    rows.append(row)
  return np.stack(rows)


def _source(tmp_path, name, **data):
  _write_metadata(name, str(tmp_path))
  config = default_config()
  config.dataset, config.image_size = name, 24
  config.data.data_dir, config.data.val_fraction = str(tmp_path), 0.2
  config.eval.protocol = data.pop("protocol", "literature")
  config.data.update(data)
  return config


def _mock(tmp_path):
  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path),
                                as_dataset_fn=_as_dataset)


@pytest.mark.parametrize("name,classes,options", [
    ("coco/2014", 80, dict(protocol="literature")),
    ("coco/2014", 80, dict(protocol="all", keep_unlabeled=True)),
    ("voc/2007", 20, dict(protocol="literature", difficult="ignore")),
    ("voc/2007", 20, dict(protocol="all", difficult="positive")),
    ("voc/2007", 20, dict(protocol="literature", difficult="negative")),
    ("voc/2012", 20, dict(protocol="literature", difficult="ignore")),
])
def test_tfds_source_through_pipeline(tmp_path, name, classes, options):
  config = _source(tmp_path, name, **options)
  rules = dict(protocol=config.eval.protocol, difficult=config.data.difficult,
               keep=config.data.keep_unlabeled)
  with _mock(tmp_path):
    source = registry.get(config)
    assert len(source.labels) == classes
    total_train = COUNTS["train"] + (COUNTS["validation"] if name == "voc/2007" else 0)
    assert source.num_examples["train"] + source.num_examples["val"] == total_train
    assert source.num_examples["val"] == round(total_train * 0.2)
    assert source.num_examples["test"] == COUNTS["test" if name == "voc/2007" else "validation"]
    for split in ("val", "test"):
      got = list(pipeline.batches(source, split, batch_size=4, train=False, config=config))
      images = np.concatenate([b["image"] for b in got])
      labels = np.concatenate([b["labels"] for b in got])
      mask = np.concatenate([b["mask"] for b in got])
      assert images.shape[1:] == (24, 24, 3) and images.dtype == np.uint8
      assert labels.shape[1] == classes and labels.dtype == np.int8
      expected = _expected(source.builder, source.splits[split], split, **rules)
      np.testing.assert_array_equal(labels[mask], expected)
      assert not labels[~mask].any()
    # training targets follow data.difficult / data.keep_unlabeled
    np.testing.assert_array_equal(source.label_matrix("train"),
                                  _expected(source.builder, source.splits["train"], "train", **rules))
    batch = next(pipeline.batches(source, "train", batch_size=4, train=True, config=config))
    assert batch["image"].shape == (4, 24, 24, 3) and batch["labels"].shape == (4, classes)


def test_the_mock_data_holds_difficult_only_labels_and_empty_images(tmp_path):
  """Each rule above is exercised: the mock has difficult-only VOC classes and empty COCO images."""
  for name in ("voc/2007", "coco/2014"):
    _write_metadata(name, str(tmp_path))
  voc = _expected(tfds.builder("voc/2007", data_dir=str(tmp_path)), "test", "test")
  assert (voc == -1).any() and (voc == 1).any()
  coco = _expected(tfds.builder("coco/2014", data_dir=str(tmp_path)), "validation", "test")
  assert (coco == -1).all(axis=1).any() and not (coco == -1).all()


def _hand_ap(scores, truth):
  """Non-interpolated AP of one class over the images where truth is 0/1 (distinct scores)."""
  order = np.argsort(-scores)
  hits = truth[order] == 1
  return float(np.mean(np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)))


def test_voc_ap_ignores_difficult_only_images(tmp_path):
  # The VOC protocol: an image whose only objects of a class are difficult is neither a positive
  # nor a negative of that class. The hand AP drops those images from the class's ranking.
  config = _source(tmp_path, "voc/2007", protocol="literature")
  with _mock(tmp_path):
    source = registry.get(config)
    labels = np.concatenate([b["labels"][b["mask"]] for b in pipeline.batches(
        source, "test", batch_size=8, train=False, config=config)])
  b = source.builder
  raw = _split_examples(b.info.features, "test")
  rng = np.random.default_rng(0)
  scores = rng.permutation(labels.size).reshape(labels.shape).astype(np.float32) / labels.size
  got = metrics.compute(scores, labels)["AP"]
  checked = 0
  for c in range(labels.shape[1]):
    clean = np.array([c in ex["labels_no_difficult"] for ex in raw])
    difficult_only = np.array([c in ex["labels"] for ex in raw]) & ~clean
    if not clean.any():
      continue
    keep = ~difficult_only
    np.testing.assert_allclose(got[c], _hand_ap(scores[keep, c], clean[keep].astype(int)),
                               rtol=1e-6, err_msg=source.labels[c])
    checked += difficult_only.any()
  assert checked  # some class really had a difficult-only image


def test_unknown_dataset_lists_known():
  config = default_config()
  config.dataset = "imagenette"
  from mlc_jax.errors import UserError
  with pytest.raises(UserError, match="coco/2014.*shapes|shapes.*coco/2014"):
    registry.get(config)


@pytest.mark.parametrize("protocol", ["literature", "all"])
def test_coco_protocol_and_counts_reach_metrics_json_and_the_report(tmp_path, protocol):
  # A predictions file scored on mock COCO: under 'literature' the images without objects are
  # left out of every metric, under 'all' they count (all-negative); metrics.json and report.md
  # say which, with the counts. References: the raw examples and sklearn, by hand.
  import json

  from sklearn import metrics as skm

  from mlc_jax.eval import evaluate
  config = _source(tmp_path, "coco/2014", protocol=protocol)
  config.eval.tune_thresholds = False
  raw = _split_examples(tfds.builder("coco/2014", data_dir=str(tmp_path)).info.features, "validation")
  with _mock(tmp_path):
    source = registry.get(config)
    from mlc_jax.eval import prediction_files
    names, _ = prediction_files.split_examples(source, "test")
    assert len(set(names)) == len(names) == COUNTS["validation"]
    rng = np.random.default_rng(1)
    scores = rng.random((len(names), len(source.labels))).astype(np.float32)
    path = tmp_path / "tagger.jsonl"
    path.write_text("".join(json.dumps({"filename": n, "scores": dict(zip(source.labels, map(float, row)))})
                            + "\n" for n, row in zip(names, scores)))
    workdir = tmp_path / "w"
    result = evaluate.evaluate(str(workdir), split="test", predictions=str(path), given=config)
  truth = np.zeros((len(raw), len(source.labels)), int)
  for i, ex in enumerate(raw):
    truth[i, ex["objects"]["label"]] = 1
  empty = truth.sum(1) == 0
  assert 0 < empty.sum() < len(raw)
  keep = ~empty if protocol == "literature" else np.ones(len(raw), bool)
  y, s = truth[keep], scores[keep]
  has = y.sum(0) > 0
  ap = [skm.average_precision_score(y[:, c], s[:, c]) for c in np.flatnonzero(has)]
  assert result["mAP"] == pytest.approx(np.mean(ap), abs=1e-6)
  top3 = np.zeros_like(y)
  np.put_along_axis(top3, np.argsort(-s, axis=1, kind="stable")[:, :3], 1, axis=1)
  assert result["OP_top3"] == pytest.approx(skm.precision_score(y.ravel(), top3.ravel()), abs=1e-6)
  doc = json.loads((workdir / "eval/test/predictions_tagger/metrics.json").read_text())
  record = doc["meta"]["protocol"]
  assert record["name"] == protocol
  assert record["images"]["test"] == keep.sum() and record["images_stored"] == len(raw)
  assert record["images_left_out"] == (empty.sum() if protocol == "literature" else 0)
  assert record["unlabeled_images"] == ("dropped" if protocol == "literature" else "kept")
  report = (workdir / "eval/test/report.md").read_text()
  assert f"Protocol: {protocol}" in report
  assert f"test: {keep.sum():,} images counted of {len(raw):,} stored" in report
  # the published rows say whether they share it: ML-GCN drops empty images, SRN keeps them
  ml_gcn = next(line for line in report.splitlines() if line.startswith("| ML-GCN |"))
  assert "unlabeled" not in ml_gcn if protocol == "literature" else "unlabeled" in ml_gcn.lower()
