"""Scoring a predictions file (CSV or JSON lines) from an external tagging service."""
import json
import re

import numpy as np
import pytest
from sklearn import metrics as skm

from mlc_jax.eval import evaluate, prediction_files as predictions
from mlc_jax.data import registry
from mlc_jax.errors import UserError

LABELS = ["aeroplane", "dog", "person", "pottedplant"]
FILES = ["a/001.jpg", "a/002.jpg", "b/003.jpg"]


def _write_csv(path, rows):
  path.write_text("filename,label,score\n" + "".join(f"{f},{l},{s}\n" for f, l, s in rows))
  return path


def test_csv_with_synonyms_takes_the_max(tmp_path):
  synonyms, ignored = predictions.read_synonyms()
  path = _write_csv(tmp_path / "p.csv", [
      ("a/001.jpg", "Airplane", 0.8), ("a/001.jpg", "jet", 0.9), ("a/001.jpg", "puppy", 0.3),
      ("002.jpg", "Potted Plant", 0.6),  # base name matches a/002.jpg
      ("b/003.jpg", "", "")])            # an image without tags
  scores = predictions.read(path, LABELS, FILES, synonyms=synonyms, ignored=ignored)
  np.testing.assert_allclose(scores, [[0.9, 0.3, 0, 0], [0, 0, 0, 0.6], [0, 0, 0, 0]])


def test_jsonl_both_row_shapes(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in [
      {"filename": "a/001.jpg", "scores": {"dog": 0.7, "man": 0.4}},
      {"filename": "a/002.jpg", "label": "person", "score": 0.2},
      {"filename": "b/003.jpg", "scores": {}}]) + "\n")
  scores = predictions.read(path, LABELS, FILES, synonyms={"person": ["man"]})
  np.testing.assert_allclose(scores, [[0, 0.7, 0.4, 0], [0, 0, 0.2, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("rows,message", [
    ([("a/001.jpg", "dog", 1), ("a/002.jpg", "dog", 1), ("b/003.jpg", "dog", 1),
      ("zzz.jpg", "dog", 1)], "1 images that are not in the split: 'zzz.jpg'"),
    ([("a/001.jpg", "dog", 1), ("a/002.jpg", "unicorn", 1), ("b/003.jpg", "dog", 1)],
     "1 tags that name no label: 'unicorn'.*synonyms file"),
    ([("a/001.jpg", "dog", 1)], "lacks 2 of the split's 3 images"),
    ([("a/001.jpg", "dog", 1.5), ("a/002.jpg", "dog", 1), ("b/003.jpg", "dog", 1)], r"\[0, 1\]"),
])
def test_bad_predictions_files_are_one_clear_error(tmp_path, rows, message):
  path = _write_csv(tmp_path / "p.csv", rows)
  with pytest.raises(UserError, match=message):
    predictions.read(path, LABELS, FILES)


def test_unknown_tags_can_be_ignored(tmp_path):
  path = _write_csv(tmp_path / "p.csv", [("a/001.jpg", "dog", 1), ("a/002.jpg", "unicorn", 1),
                                         ("b/003.jpg", "dog", 0.5)])
  stats = {}
  scores = predictions.read(path, LABELS, FILES, unknown_tags="ignore", stats=stats)
  assert stats["unknown_tags"] == 1 and scores[1].sum() == 0
  with pytest.raises(UserError, match="header filename,label,score"):
    predictions.read(_write_csv_raw(tmp_path / "x.csv", "image,tag\n"), LABELS, FILES)
  with pytest.raises(UserError, match="not found"):
    predictions.read(tmp_path / "missing.csv", LABELS, FILES)


def _write_csv_raw(path, text):
  path.write_text(text)
  return path


def test_evaluate_a_predictions_file_end_to_end(shapes_config, tmp_path):
  source = registry.get(shapes_config)
  names, y = predictions.split_examples(source, "test")
  assert len(names) == shapes_config.data.shapes_test
  rng = np.random.default_rng(0)
  # A noisy tagger: true labels score high more often; "circle" is a free-text tag for disc.
  expected = np.clip(0.6 * y + 0.5 * rng.random(y.shape), 0, 1).astype(np.float32)
  tag = {label: label for label in source.labels}
  tag["disc"] = "circle"
  rows = [{"filename": n, "scores": {tag[l]: float(expected[i, j]) for j, l in enumerate(source.labels)}}
          for i, n in enumerate(names)]
  path = tmp_path / "tagger.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  synonyms = tmp_path / "syn.json"
  synonyms.write_text(json.dumps({"synonyms": {"disc": ["circle"]}}))
  config = shapes_config.copy_and_resolve_references()
  config.eval.synonyms = str(synonyms)
  config.eval.tune_thresholds = False
  workdir = tmp_path / "w"
  result = evaluate.evaluate(str(workdir), split="test", predictions=str(path), given=config)
  has = y.sum(0) > 0
  ap = [skm.average_precision_score(y[:, c], expected[:, c]) for c in np.flatnonzero(has)]
  assert result["mAP"] == pytest.approx(np.mean(ap), abs=1e-6)
  assert result["f1_micro"] == pytest.approx(
      skm.f1_score(y, expected >= 0.5, average="micro", zero_division=1), abs=1e-6)
  report = (workdir / "eval/test/report.md").read_text()
  assert "## External predictions: tagger.jsonl" in report
  shown = re.search(r"^\| mAP \| ([\d.]+) \|", report, re.M).group(1)
  assert float(shown) == pytest.approx(100 * np.mean(ap), abs=0.006)
  assert (workdir / "eval/test/predictions_tagger/ap_per_class.png").stat().st_size > 0


def test_eval_unknown_tags_ignore_scores_the_file_and_error_refuses_it(shapes_config, tmp_path):
  """eval.unknown_tags: 'error' (default) refuses a file with a tag that names no label, naming
  it; 'ignore' drops that tag, scores the rest (mAP against sklearn) and counts it."""
  source = registry.get(shapes_config)
  names, y = predictions.split_examples(source, "test")
  scores = np.clip(0.5 * y + 0.6 * np.random.default_rng(1).random(y.shape), 0, 1)
  rows = [{"filename": n, "scores": dict({l: float(scores[i, j]) for j, l in
                                          enumerate(source.labels)},
                                         **({"unicorn": 0.9} if i == 3 else {}))}
          for i, n in enumerate(names)]
  path = tmp_path / "tagger.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = shapes_config.copy_and_resolve_references()
  config.eval.tune_thresholds = False
  with pytest.raises(UserError, match="'unicorn'.*unknown_tags='ignore'"):
    evaluate.evaluate(str(tmp_path / "w"), split="test", predictions=str(path), given=config)
  config.eval.unknown_tags = "ignore"
  result = evaluate.evaluate(str(tmp_path / "w"), split="test", predictions=str(path),
                             given=config)
  ap = [skm.average_precision_score(y[:, c], scores[:, c]) for c in range(y.shape[1])]
  assert result["mAP"] == pytest.approx(np.mean(ap), abs=1e-6)
  doc = json.loads((tmp_path / "w/eval/test/predictions_tagger/metrics.json").read_text())
  assert doc["meta"]["unknown_tags"] == "ignore" and doc["meta"]["unknown_tag_count"] == 1
