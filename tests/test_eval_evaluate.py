"""evaluate(workdir): metrics.json, report.md and plots, checked against sklearn on the saved scores.

The workdir is made by hand (config.json, labels.txt, metrics.jsonl and one Orbax checkpoint of a
randomly initialised model), so the test times evaluation only, not training.
"""
import json
import re

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from mlc_jax import checkpoints
from mlc_jax.eval import evaluate
from mlc_jax.data import pipeline, registry
from mlc_jax.errors import UserError


def make_workdir(config, workdir):
  """A workdir with one 'head' checkpoint of a freshly built model; returns the model."""
  from flax import nnx
  from mlc_jax import models
  source = registry.get(config)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json(indent=2))
  (workdir / "labels.txt").write_text("\n".join(source.labels) + "\n")
  history = [{"stage": "head", "epoch": e, "step": 6 * e, "train_loss": 0.7 - 0.05 * e,
              "val_loss": 0.69 - 0.03 * e, "val_mAP": 0.3 + 0.05 * e} for e in (1, 2)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
  model = models.build_model(config, len(source.labels), rngs=nnx.Rngs(3))
  mngr = checkpoints.Manager(workdir, "head", "val_loss")
  mngr.save(1, checkpoints.model_state(model), {"step": np.int64(1)}, metrics={"val_loss": 0.5})
  mngr.close()
  return model


@pytest.fixture(scope="module")
def evaluated(shapes_config, tmp_path_factory):
  config = shapes_config.copy_and_resolve_references()
  config.head.hidden = (16,)
  workdir = tmp_path_factory.mktemp("eval_workdir")
  model = make_workdir(config, workdir)
  result = evaluate.evaluate(str(workdir), split="test")
  return config, workdir, model, result


def _prf(pred, y):
  """CP, CR, CF1, OP, OR, OF1 by hand (class means over classes with positives)."""
  tp, npred, npos = (pred * y).sum(0), pred.sum(0), y.sum(0)
  has = npos > 0
  cp = np.mean(np.divide(tp, npred, out=np.zeros_like(tp), where=npred > 0)[has])
  cr = np.mean((tp / np.maximum(npos, 1))[has])
  op, orr = tp.sum() / max(npred.sum(), 1), tp.sum() / npos.sum()
  h = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0
  return {"CP": cp, "CR": cr, "CF1": h(cp, cr), "OP": op, "OR": orr, "OF1": h(op, orr)}


def _reference(scores, y, k=3):
  """The report's numbers recomputed from the saved scores with sklearn and numpy."""
  has = y.sum(0) > 0
  ap = [skm.average_precision_score(y[:, c], scores[:, c]) for c in np.flatnonzero(has)]
  pred = (scores >= 0.5).astype(float)
  ref = {"mAP": np.mean(ap), **_prf(pred, y),
         "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=1),
         "f1_micro": skm.f1_score(y, pred, average="micro", zero_division=1),
         "hamming_loss": skm.hamming_loss(y, pred),
         "lrap": skm.label_ranking_average_precision_score(y, scores),
         "ranking_loss": skm.label_ranking_loss(y, scores)}
  top = np.zeros_like(scores)
  np.put_along_axis(top, np.argsort(-scores, axis=1, kind="stable")[:, :k], 1.0, axis=1)
  ref.update({f"{n}_top{k}": v for n, v in _prf(top, y).items()})
  return ref


def test_saved_scores_are_the_models_on_the_test_split(evaluated):
  config, workdir, model, _ = evaluated
  saved = np.load(workdir / "eval/test/scores.npz")
  source = registry.get(config)
  images = np.concatenate([b["image"][b["mask"]] for b in pipeline.batches(
      source, "test", batch_size=16, train=False, config=config)])
  import jax
  expected = np.asarray(jax.nn.sigmoid(model(images)))  # eager, no jit, no sharding
  assert saved["scores"].shape == (config.data.shapes_test, len(source.labels))
  np.testing.assert_allclose(saved["scores"], expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(saved["labels"], source.label_matrix("test"))
  assert list(saved["names"]) == source.labels


def test_metrics_json_and_report_match_sklearn(evaluated):
  _, workdir, _, result = evaluated
  saved = np.load(workdir / "eval/test/scores.npz")
  ref = _reference(saved["scores"].astype(np.float64), saved["labels"].astype(np.float64))
  doc = json.loads((workdir / "eval/test/metrics.json").read_text())
  report = (workdir / "eval/test/report.md").read_text()
  rows = dict(re.findall(r"^\| ([^|]+?) \| ([-\d.]+) \|", report, re.M))
  names = {"f1_macro": "F1 macro", "f1_micro": "F1 micro", "hamming_loss": "Hamming loss",
           "lrap": "LRAP", "ranking_loss": "ranking loss"}
  for key, value in ref.items():
    assert doc["metrics"][key] == pytest.approx(value, abs=1e-5), key
    assert result[key] == pytest.approx(value, abs=1e-5), key
    row = names.get(key, key.replace("_top3", " top-3"))
    percent = key not in ("hamming_loss", "ranking_loss")
    shown = float(rows[row]) / (100 if percent else 1)
    assert shown == pytest.approx(value, abs=6e-5 if percent else 6e-5), key
  assert len(doc["metrics"]["AP"]) == saved["scores"].shape[1]


def test_per_class_table_sorted_by_ap(evaluated):
  _, workdir, _, _ = evaluated
  saved = np.load(workdir / "eval/test/scores.npz")
  report = (workdir / "eval/test/report.md").read_text()
  section = report.split("### Per class")[1].split("###")[0]
  rows = re.findall(r"^\| (\w+) \| ([\d.]+) \|", section, re.M)
  names = list(saved["names"])
  expected = {n: 100 * skm.average_precision_score(saved["labels"][:, i], saved["scores"][:, i])
              for i, n in enumerate(names)}
  assert [n for n, _ in rows] == sorted(names, key=lambda n: -expected[n])
  for name, shown in rows:
    assert float(shown) == pytest.approx(expected[name], abs=0.006)


def test_thresholds_tuned_on_val_applied_to_test(evaluated):
  config, workdir, model, _ = evaluated
  import jax
  source = registry.get(config)
  val = np.concatenate([b["image"][b["mask"]] for b in pipeline.batches(
      source, "val", batch_size=16, train=False, config=config)])
  val_scores = np.asarray(jax.nn.sigmoid(model(val)))
  val_y = source.label_matrix("val")
  # Stored with the checkpoint they were tuned for: the head stage's step 1.
  saved = json.loads((workdir / "checkpoints/head/thresholds.json").read_text())["1"]
  assert saved["labels"] == source.labels and saved["tuned_on"] == "val"
  t = np.asarray(saved["thresholds"], np.float32)
  for c in range(len(t)):
    if val_y[:, c].sum() == 0:
      continue
    best = max(skm.f1_score(val_y[:, c], val_scores[:, c] >= s, zero_division=0)
               for s in val_scores[:, c])
    got = skm.f1_score(val_y[:, c], val_scores[:, c] >= t[c], zero_division=0)
    assert got == pytest.approx(best, abs=1e-6)
  test = np.load(workdir / "eval/test/scores.npz")
  ref = _prf((test["scores"] >= t).astype(float), test["labels"].astype(float))
  doc = json.loads((workdir / "eval/test/metrics.json").read_text())
  for key, value in ref.items():
    assert doc["tuned"]["metrics"][key] == pytest.approx(value, abs=1e-5), key
  assert "tuned on val" in (workdir / "eval/test/report.md").read_text()


def test_plots_are_valid_pngs(evaluated):
  _, workdir, _, _ = evaluated
  report = (workdir / "eval/test/report.md").read_text()
  for name in ("ap_per_class.png", "pr_curves.png", "training_curves.png", "examples.png"):
    path = workdir / "eval/test" / name
    assert f"]({name})" in report
    with Image.open(path) as image:
      image.verify()
    with Image.open(path) as image:
      assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_no_literature_table_for_shapes(evaluated):
  _, workdir, _, _ = evaluated
  assert "Published results" not in (workdir / "eval/test/report.md").read_text()


def test_workdir_without_checkpoints_is_one_clear_error(tmp_path, shapes_config):
  (tmp_path / "config.json").write_text(shapes_config.to_json())
  (tmp_path / "labels.txt").write_text("a\n")
  with pytest.raises(UserError, match="no checkpoints"):
    evaluate.evaluate(str(tmp_path), split="test")
  with pytest.raises(UserError, match="split"):
    evaluate.evaluate(str(tmp_path), split="dev")


def test_report_sets_baseline_beside_the_model(evaluated):
  from mlc_jax.eval import report, results
  config, workdir, _, _ = evaluated
  saved = np.load(workdir / "eval/test/scores.npz")
  names = list(saved["names"])
  mapped = [0, 2, 3]  # a baseline that maps three labels only
  base = np.zeros_like(saved["scores"])
  base[:, mapped] = saved["scores"][::-1, mapped]
  meta = {"kind": "baseline", "dataset": "shapes", "split": "test", "weights": "w.h5",
          "mapping": "m.json", "reduce": "max", "mapped": [names[i] for i in mapped],
          "unmapped": [n for i, n in enumerate(names) if i not in mapped]}
  results.save(workdir / "eval/test/baseline", base, saved["labels"], names, meta, config,
               columns=mapped)
  text = report.write(workdir / "eval/test").read_text()
  section = text.split("## Baseline")[1]
  assert f"left out of the means: {', '.join(meta['unmapped'])}" in section
  assert "| metric | ImageNet VGG16, no fine-tuning | fine-tuned, same 3 classes | fine-tuned, all" in section
  row = re.search(r"^\| mAP \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", section, re.M).groups()
  y = saved["labels"]
  ap = lambda s, cols: np.mean([skm.average_precision_score(y[:, c], s[:, c]) for c in cols
                                if y[:, c].sum() > 0])
  assert float(row[0]) == pytest.approx(100 * ap(base, mapped), abs=0.006)
  assert float(row[1]) == pytest.approx(100 * ap(saved["scores"], mapped), abs=0.006)
  assert float(row[2]) == pytest.approx(100 * ap(saved["scores"], range(len(names))), abs=0.006)


def test_evaluate_takes_only_keys_that_do_not_change_the_model(shapes_config):
  saved = shapes_config.copy_and_resolve_references()
  given = shapes_config.copy_and_resolve_references()
  given.eval_batch_size, given.data.data_dir, given.eval.k = 4, "/moved/data", 2
  given.image_size = 48  # the config file differs from the run: the run's value is kept
  config = evaluate.evaluation_config(saved, given, explicit={"eval_batch_size": 4})
  assert (config.eval_batch_size, config.data.data_dir, config.eval.k) == (4, "/moved/data", 2)
  assert config.image_size == saved.image_size
  with pytest.raises(UserError, match=r"overriding image_size would change it"):
    evaluate.evaluation_config(saved, given, explicit={"image_size": 48, "eval.k": 2})


def test_head_alone_scored_beside_the_fine_tuned_model(shapes_config, tmp_path):
  """eval.head_alone: with a head and a finetune checkpoint (two different models), the report's
  summary gains the head's column; its scores are the head checkpoint's model on test."""
  import jax
  from flax import nnx
  from mlc_jax import models
  config = shapes_config.copy_and_resolve_references()
  config.head.hidden = (16,)
  config.eval.head_alone = True
  head_model = make_workdir(config, tmp_path)
  tuned = models.build_model(config, len(registry.get(config).labels), rngs=nnx.Rngs(11))
  mngr = checkpoints.Manager(tmp_path, "finetune", "val_loss")
  mngr.save(1, checkpoints.model_state(tuned), {"step": np.int64(1)}, metrics={"val_loss": 0.4})
  mngr.close()
  evaluate.evaluate(str(tmp_path), split="test", given=config)
  source = registry.get(config)
  images = np.concatenate([b["image"][b["mask"]] for b in pipeline.batches(
      source, "test", batch_size=16, train=False, config=config)])
  for folder, model in (("eval/test", tuned), ("eval/test/head", head_model)):
    saved = np.load(tmp_path / folder / "scores.npz")
    expected = np.asarray(jax.nn.sigmoid(model(images)))  # eager, no jit, no sharding
    np.testing.assert_allclose(saved["scores"], expected, rtol=1e-4, atol=1e-5, err_msg=folder)
  head = json.loads((tmp_path / "eval/test/head/metrics.json").read_text())
  assert head["meta"]["stage"] == "head"
  y = np.load(tmp_path / "eval/test/head/scores.npz")["labels"]
  assert head["metrics"]["mAP"] == pytest.approx(_reference(expected, y)["mAP"], abs=1e-5)
  report = (tmp_path / "eval/test/report.md").read_text()
  header = next(l for l in report.splitlines() if l.startswith("| metric | threshold 0.5"))
  assert header.endswith("| head alone (frozen backbone), threshold 0.5 |")
  row = next(l for l in report.splitlines() if l.startswith("| mAP |"))
  assert row.split("|")[-2].strip() == f"{100 * head['metrics']['mAP']:.2f}"
  config.eval.head_alone = False  # turned off: the head's result goes with the next evaluation
  evaluate.evaluate(str(tmp_path), split="test", given=config)
  assert not (tmp_path / "eval/test/head").exists()
  assert "head alone" not in (tmp_path / "eval/test/report.md").read_text()
