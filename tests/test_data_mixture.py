"""Mixtures (config.dataset='a=folder+b=folder'): the union of labels through the alignment, the
-1 pattern of each part exactly as the file says, weighted draws that are deterministic and exact
on resume, and a bad alignment file refused in one line."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import default_config
from mlc_jax.data import mixture, pipeline, registry
from mlc_jax.errors import UserError

# part a: car, cat, dog; part b: animal, cars, dog, tree (sorted, as the folder code reads them)
A_ROWS = [("a0.png", ["cat"], "train"), ("a1.png", ["dog", "car"], "train"),
          ("a2.png", ["cat", "dog"], "train"), ("a3.png", ["car"], "train"),
          ("a4.png", ["dog"], "val"), ("a5.png", ["cat"], "test"), ("a6.png", ["car", "cat"], "test")]
B_ROWS = [("b0.png", ["cars", "tree"], "train"), ("b1.png", ["animal", "dog"], "train"),
          ("b2.png", ["tree"], "train"), ("b3.png", ["animal"], "val"),
          ("b4.png", ["dog", "animal"], "test")]
ALIGNMENT = {"same": [{"a": "car", "b": "cars"}],  # dog = dog by name
             "implies": [{"if": ["a", "cat"], "then": ["b", "animal"]},
                         {"if": ["a", "dog"], "then": ["b", "animal"]},
                         {"if": ["a", "car"], "then": ["x", "vehicle"]}]}  # x: not in this mixture
UNION = ["car", "cat", "dog", "animal", "tree"]


def _hand_target(part, labels):
  """The union target by hand: the part's own labels 1/0, the rest -1 unless implied."""
  own = {"a": ["car", "cat", "dog"], "b": ["car", "dog", "animal", "tree"]}[part]
  rename = {"cars": "car"}
  present = {rename.get(l, l) for l in labels}
  t = [(1 if name in present else 0) if name in own else -1 for name in UNION]
  if part == "a" and present & {"cat", "dog"}:
    t[UNION.index("animal")] = 1
  return t


def _folder(root, rows, seed):
  root.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for name, _, _ in rows:
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / name)
  lines = ["filename,labels,split"] + [f"{f},{' '.join(l)},{s}" for f, l, s in rows]
  (root / "labels.csv").write_text("\n".join(lines) + "\n")


def _mixture_config(tmp_path, alignment=ALIGNMENT):
  import ml_collections
  _folder(tmp_path / "a", A_ROWS, 0)
  _folder(tmp_path / "b", B_ROWS, 1)
  (tmp_path / "align.json").write_text(json.dumps(alignment))
  config = default_config()
  config.dataset, config.image_size = "a=folder+b=folder", 8
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.label_alignment = str(tmp_path / "align.json")
  config.data.sources.a = ml_collections.ConfigDict({"manual_dir": str(tmp_path / "a")})
  config.data.sources.b = ml_collections.ConfigDict({"manual_dir": str(tmp_path / "b"),
                                                     "weight": 3.0})
  return config


def _eval_labels(source, split, config):
  rows = [(b["index"][b["mask"]], b["labels"][b["mask"]])
          for b in pipeline.batches(source, split, batch_size=2, train=False, config=config)]
  index = np.concatenate([r[0] for r in rows])
  return index, np.concatenate([r[1] for r in rows])


@pytest.mark.parametrize("cache_mb", [0.0, 64.0])  # tf.data streaming, and decoded in memory
def test_union_labels_and_the_unknown_pattern_of_each_part(tmp_path, cache_mb):
  config = _mixture_config(tmp_path)
  config.data.cache_mb = cache_mb
  source = registry.get(config)
  assert source.labels == UNION
  assert source.num_examples == {"train": 7, "val": 2, "test": 3}
  assert source.notes["annotates"] == {"a": ["car", "cat", "dog"], "b": ["animal", "car", "dog",
                                                                        "tree"]}
  # per part, in its stored order (TFDS shuffles a folder's rows when it builds it)
  for split in ("train", "val", "test"):
    a = [_hand_target("a", l) for _, l, s in A_ROWS if s == split]
    b = [_hand_target("b", l) for _, l, s in B_ROWS if s == split]
    got = source.label_matrix(split)
    assert sorted(map(list, got[:len(a)])) == sorted(a)  # part a's images first, then b's
    assert sorted(map(list, got[len(a):])) == sorted(b)
    index, labels = _eval_labels(source, split, config)  # the pipeline: stored order, indexed
    np.testing.assert_array_equal(index, np.arange(len(a) + len(b)))
    np.testing.assert_array_equal(labels, got)


def test_weighted_draws_are_exact_shares_deterministic_and_cover_each_part():
  sizes, weights = [3000, 7000], [1.0, 1.0]
  part, position = mixture.draws(sizes, weights, seed=3, epoch=1)
  assert np.bincount(part).tolist() == [5000, 5000]  # the weights' shares, not a sample
  again = mixture.draws(sizes, weights, seed=3, epoch=1)
  assert (again[0] == part).all() and (again[1] == position).all()
  assert not (mixture.draws(sizes, weights, seed=3, epoch=2)[0] == part).all()
  for i, size in enumerate(sizes):  # each part's images in successive permutations
    drawn = position[part == i]
    first = drawn[:min(size, len(drawn))]
    assert sorted(first.tolist()) == list(range(len(first))) if len(drawn) >= size else (
        len(set(first.tolist())) == len(first))
  assert mixture.quotas(10, [1, 1, 1]).tolist() == [4, 3, 3]  # largest remainder, sums to n
  shares = np.bincount(mixture.draws([500, 100, 400], [0.2, 0.5, 0.3], 0, 0)[0]) / 1000
  np.testing.assert_allclose(shares, [0.2, 0.5, 0.3], atol=0.01)


@pytest.mark.parametrize("cache_mb", [0.0, 64.0])
def test_training_order_is_weighted_deterministic_and_resumes_exactly(tmp_path, cache_mb):
  config = _mixture_config(tmp_path)
  config.data.cache_mb = cache_mb
  assert registry.get(config).weights == [4.0, 3.0]  # a: its 4 training images by default
  config.data.sources.a.weight = 1.0
  source = registry.get(config)
  epoch = lambda e, start=0: [b["labels"] for b in pipeline.batches(
      source, "train", batch_size=1, train=True, config=config, seed=5, epoch=e,
      start_batch=start)]
  first = np.concatenate(epoch(1))
  np.testing.assert_array_equal(first, np.concatenate(epoch(1)))  # deterministic
  np.testing.assert_array_equal(first[3:], np.concatenate(epoch(1, 3)))  # resume mid-epoch: exact
  from_b = sum(row[UNION.index("tree")] != -1 for row in first)  # b annotates tree, a does not
  assert from_b == mixture.quotas(7, [1.0, 3.0])[1] == 5  # weight 3 : 1 of 7 draws


def test_an_alignment_naming_an_unknown_label_is_one_clear_error(tmp_path):
  bad = {"same": [{"a": "car", "b": "carz"}], "implies": []}
  config = _mixture_config(tmp_path, bad)
  with pytest.raises(UserError, match=r"align.json: 'same' group 0 names b label 'carz', which "
                                      r"part b does not have"):
    registry.get(config)


def test_the_shipped_alignment_names_only_labels_its_datasets_have():
  table = json.loads(mixture.ALIGNMENT.read_text())
  parts = [(k, k, names) for k, names in table["datasets"].items()]
  labels, columns, implied = mixture.align(parts)
  coco, voc, nus = (table["datasets"][k] for k in ("coco", "voc", "nus_wide"))
  assert len(coco) == 80 and len(voc) == 20 and len(nus) == 81
  col = lambda part, name: int(columns[part][[p[2] for p in parts][part].index(name)])
  assert col(0, "airplane") == col(1, "aeroplane") == col(2, "plane")
  assert col(0, "person") == col(2, "person") and col(0, "tv") == col(1, "tvmonitor")
  assert (coco.index("dog"), col(2, "animal")) in implied[0]
  assert len(labels) == len(set(labels))


def tf_png(array):
  """PNG bytes of an array, as the folder dataset stores a PNG file."""
  import io
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _rows(prefix, names, counts, seed):
  rng = np.random.default_rng(seed)
  rows = []
  for split, n in zip(("train", "val", "test"), counts):
    for i in range(n):
      labels = [l for l in names if rng.random() < 0.4] or [names[i % len(names)]]
      rows.append((f"{prefix}{split}{i}.png", labels, split))
  return rows


def test_a_mixture_trains_and_each_source_is_evaluated_as_if_alone(tmp_path):
  """features -> head -> evaluate on a mixture; each part's section equals scoring that part
  alone with the same model, on its own labels."""
  import ml_collections
  from mlc_jax import metrics, restore, runner, workdir as workdir_lib
  from conftest import forward
  _folder(tmp_path / "a", _rows("a", ["car", "cat", "dog"], (16, 6, 8), 0), 0)
  _folder(tmp_path / "b", _rows("b", ["animal", "cars", "dog", "tree"], (16, 6, 8), 1), 1)
  (tmp_path / "align.json").write_text(json.dumps(ALIGNMENT))
  config = default_config()
  config.dataset, config.image_size, config.model.width = "a=folder+b=folder", 32, 1 / 16
  config.model.weights, config.batch_size, config.eval_batch_size = "", 8, 8
  config.head.batch_size, config.head.epochs = 8, 2
  config.stages = ("features", "head", "evaluate")
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.label_alignment = str(tmp_path / "align.json")
  config.data.sources.a = ml_collections.ConfigDict({"manual_dir": str(tmp_path / "a")})
  config.data.sources.b = ml_collections.ConfigDict({"manual_dir": str(tmp_path / "b")})
  workdir = tmp_path / "run"
  runner.train_and_evaluate(config, str(workdir))
  assert (workdir / "labels.txt").read_text().split("\n")[:5] == UNION
  union = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  restored = restore.restore_model(str(workdir), "head", "best")
  for alias, cols in (("a", [0, 1, 2]), ("b", [0, 2, 3, 4])):
    part = registry.get(mixture.part_config(config, alias, "folder"))
    batches = list(pipeline.batches(part, "test", batch_size=8, train=False, config=config))
    logits = np.concatenate([forward(restored.model, b["image"])[b["mask"]] for b in batches])
    y = np.concatenate([b["labels"][b["mask"]] for b in batches])
    scores = 1 / (1 + np.exp(-logits))
    alone = metrics.compute(scores[:, cols], y[:, [part.labels.index(
        {"car": "cars"}.get(UNION[c], UNION[c]) if alias == "b" else UNION[c]) for c in cols]],
        k=3, threshold=0.5)
    got = json.loads((workdir / "eval" / "test" / "sources" / alias / "metrics.json").read_text())
    assert got["meta"]["dataset"] == "folder" and got["meta"]["source"] == alias
    np.testing.assert_allclose(got["metrics"]["mAP"], alone["mAP"], rtol=1e-5)
    np.testing.assert_allclose(union["sources"][alias]["CF1_top3"], alone["CF1_top3"], rtol=1e-5)
  text = (workdir / "eval" / "test" / "report.md").read_text()
  assert "## Source a: folder" in text and "## Source b: folder" in text
  assert workdir_lib.read_config(workdir).dataset == "a=folder+b=folder"
  import mlc_jax  # the public API over the union: the restored model's scores on a part's image
  clf = mlc_jax.load(str(workdir), stage="head")
  assert clf.labels == UNION
  image = np.asarray(Image.open(tmp_path / "a" / "atest0.png").convert("RGB"))
  (expected,) = 1 / (1 + np.exp(-forward(restored.model, pipeline.decode_and_resize(
      tf_png(image), 32, "plain").numpy()[None])))
  np.testing.assert_allclose(clf.predict([str(tmp_path / "a" / "atest0.png")])[0], expected,
                             rtol=1e-5, atol=1e-6)


def test_mock_coco_and_a_nus_wide_tree_as_one_mixture(tmp_path):
  """TFDS mock COCO 2014 + a NUS-WIDE tree, with the shipped alignment, through features, head
  and evaluate: the union's -1 pattern equals each part's own targets placed by label name, and
  each part is evaluated under its own protocol with its own published rows."""
  import tensorflow_datasets as tfds
  import test_data_sources as nus
  import test_data_tfds as coco
  from mlc_jax import runner
  data = tmp_path / "tfds"
  nus._nus_tree(str(tmp_path / "nus"))
  config = coco._source(data, "coco/2014")
  builder = tfds.builder("coco/2014", data_dir=str(data))  # the mock's metadata, with real names
  builder.info.features["objects"]["label"].names = json.loads(mixture.ALIGNMENT.read_text())[
      "datasets"]["coco"]
  builder.info.write_to_directory(builder.data_dir)
  config.dataset, config.image_size, config.model.width = "coco/2014+nus_wide", 32, 1 / 16
  config.model.weights, config.batch_size, config.eval_batch_size = "", 4, 4
  config.head.batch_size, config.head.epochs = 4, 1
  config.data.val_fraction = 0.3
  config.stages = ("features", "head", "evaluate")
  import ml_collections
  config.data.sources.nus_wide = ml_collections.ConfigDict({"manual_dir": str(tmp_path / "nus")})
  real = tfds.core.dataset_builder.FileReaderBuilder._as_dataset
  registry.get(mixture.part_config(config, "nus_wide", "nus_wide"))  # built before the mock

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):  # only COCO is mocked
    if self.name == "nus_wide":
      return real(self, split, decoders=decoders, read_config=read_config, **kwargs)
    return coco._as_dataset(self, split, decoders=decoders, read_config=read_config)

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data),
                              as_dataset_fn=as_dataset):
    source = registry.get(config)
    parts = {a: registry.get(mixture.part_config(config, a, d)) for a, d in
             (("coco_2014", "coco/2014"), ("nus_wide", "nus_wide"))}
    coco_labels = parts["coco_2014"].labels
    assert coco_labels[:3] == ["person", "bicycle", "car"]
    assert source.labels == coco_labels + ["sky", "water"]  # NUS dog is COCO dog
    assert source.notes["annotates"]["nus_wide"] == ["sky", "dog", "water"]
    for split in ("train", "val", "test"):
      got, start = source.label_matrix(split), 0
      for alias, part in parts.items():
        own = part.label_matrix(split)
        expected = np.full((len(own), len(source.labels)), -1, np.int8)
        for j, name in enumerate(part.labels):
          expected[:, source.labels.index(name)] = own[:, j]
        np.testing.assert_array_equal(got[start:start + len(own)], expected)
        start += len(own)
    runner.train_and_evaluate(config, str(tmp_path / "run"))
  result = json.loads((tmp_path / "run" / "eval" / "test" / "metrics.json").read_text())
  assert set(result["sources"]) == {"coco_2014", "nus_wide"}
  coco_eval = json.loads((tmp_path / "run" / "eval" / "test" / "sources" / "coco_2014" /
                          "metrics.json").read_text())
  assert coco_eval["meta"]["protocol"]["dataset"] == "coco/2014"
  assert coco_eval["meta"]["num_images"] == source.parts[0][1].num_examples["test"]
  text = (tmp_path / "run" / "eval" / "test" / "report.md").read_text()
  assert "## Source coco_2014: coco/2014" in text and "## Source nus_wide: nus_wide" in text
  assert "Published results on coco/2014" in text


def test_the_baseline_and_a_predictions_file_refuse_a_mixture_in_one_line(tmp_path):
  from mlc_jax.eval import baselines, evaluate
  config = _mixture_config(tmp_path)
  config.image_size = 32
  tail = (r" is scored against one dataset: give one of its parts with --config.dataset=NAME "
          r"\(folder, folder\)")
  with pytest.raises(UserError, match="is a mixture; the baseline" + tail):
    baselines.baseline(config, str(tmp_path / "w"))
  with pytest.raises(UserError, match="is a mixture; a predictions file" + tail):
    evaluate.evaluate_predictions(str(tmp_path / "w"), str(tmp_path / "p.csv"), config=config)
  assert not (tmp_path / "w").exists() and not (tmp_path / "tfds").exists()  # before any work


def test_the_data_report_says_which_part_annotates_which_label(tmp_path, capsys):
  from mlc_jax.data import report
  config = _mixture_config(tmp_path)
  config.image_size = 32
  got = report.data_report(config, str(tmp_path / "w"))
  assert got["labels"] == UNION and got["splits"]["test"]["images"] == 3
  assert got["notes"]["annotates"] == {"a": ["car", "cat", "dog"],
                                       "b": ["animal", "car", "dog", "tree"]}
  out = capsys.readouterr().out
  assert "  a annotates 3: car, cat, dog" in out and "  b annotates 4: animal, car, dog, tree" in out
  saved = json.loads((tmp_path / "w" / "data_report.json").read_text())
  assert saved["notes"]["annotates"] == got["notes"]["annotates"]
