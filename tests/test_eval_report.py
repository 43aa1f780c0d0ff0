"""The report's comparison rows (eval.compare: another run on the same test images) and the top-k
table of a single-label classifier against the multi-label model, k = 1-4, against hand counts."""
import json

import numpy as np

from mlc_jax.eval import report

NAMES = ["a", "b", "c"]
LABELS = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]], np.int8)


def write_result(directory, scores, mAP, labels=LABELS):
  directory.mkdir(parents=True, exist_ok=True)
  meta = {"k": 2, "threshold": 0.5, "topk_min_score": False, "dataset": "d", "split": "test",
          "num_images": len(labels), "checkpoint": "x"}
  (directory / "metrics.json").write_text(json.dumps(
      {"meta": meta, "metrics": {"mAP": mAP, "CF1_top2": 0.5}, "per_class": []}))
  np.savez(directory / "scores.npz", scores=scores, labels=labels, names=np.array(NAMES))


def test_compare_rows_come_from_the_named_runs_on_the_same_images(tmp_path):
  scores = np.full(LABELS.shape, 0.5, np.float32)
  run, other, elsewhere = tmp_path / "run", tmp_path / "random", tmp_path / "other_images"
  write_result(run / "eval" / "test", scores, 0.9)
  write_result(run / "eval" / "test" / "head", scores, 0.8)
  write_result(other / "eval" / "test", scores, 0.6)
  write_result(other / "eval" / "test" / "head", scores, 0.55)
  write_result(elsewhere / "eval" / "test", scores[:3], 0.99, LABELS[:3])
  pairs = (("random backbone", str(other)), ("elsewhere", str(elsewhere)))
  report.write(run / "eval" / "test", compare=pairs)
  text = report.write(run / "eval" / "test").read_text()  # a later report (baseline) keeps them
  section = text[text.index("## Comparison"):]
  rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
  assert [r.split(" | ")[0] for r in rows] == [
      "| this run: fine-tuned", "| this run: head alone (frozen backbone)",
      "| random backbone: fine-tuned", "| random backbone: head alone"]
  assert [r.split(" | ")[1] for r in rows] == ["90.00", "80.00", "60.00", "55.00"]
  assert "elsewhere: fine-tuned" in section.split("Left out")[1]


def test_topk_table_against_hand_counts():
  # image 0: a, b present; ranks b > c > a. image 1: b, c; ranks c > b > a.
  # image 2: a; ranks a > b > c. image 3: c; ranks b > a > c.
  scores = np.array([[0.1, 0.9, 0.5], [0.1, 0.6, 0.8], [0.9, 0.5, 0.2], [0.5, 0.6, 0.1]],
                    np.float32)
  doc = {"meta": {"threshold": 0.5, "topk_min_score": False}}
  table = report.topk_table([("m", doc, {"scores": scores, "labels": LABELS})], ks=(1, 2))
  rows = [line.split(" | ") for line in table.splitlines()[2:]]
  # k=1: predicted b, c, a, b -> 3 correct of 4 predicted, of 6 true labels
  op, orec = 3 / 4, 3 / 6
  assert rows[0][2:5] == [f"{100 * op:.2f}", f"{100 * orec:.2f}",
                          f"{100 * 2 * op * orec / (op + orec):.2f}"]
  # k=2: {b,c} {c,b} {a,b} {b,a}: correct 1 + 2 + 1 + 0 = 4 of 8 predicted, of 6 true
  op, orec = 4 / 8, 4 / 6
  assert rows[1][2:5] == [f"{100 * op:.2f}", f"{100 * orec:.2f}",
                          f"{100 * 2 * op * orec / (op + orec):.2f}"]
