"""mlc_jax.eval.results: the config's eval options applied to a saved result, against sklearn and
hand-made top-k decisions."""
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import default_config
from mlc_jax.eval import results


def _data():
  rng = np.random.default_rng(4)
  scores = rng.random((40, 5)).astype(np.float32)
  labels = (rng.random((40, 5)) < 0.4).astype(np.int8)
  labels[0] = 1  # every class has a positive
  return scores, labels


@pytest.mark.parametrize("threshold, topk_min_score", [(0.3, False), (0.7, True)])
def test_eval_threshold_and_topk_min_score_reach_the_saved_metrics(tmp_path, threshold,
                                                                   topk_min_score):
  """eval.threshold decides every thresholded metric (sklearn's f1/hamming at score >= it);
  eval.topk_min_score = True keeps only top-k labels that also score >= eval.threshold (ML-GCN),
  False exactly k per image. eval.k = 2."""
  scores, labels = _data()
  config = default_config()
  config.eval.update(threshold=threshold, topk_min_score=topk_min_score, k=2)
  m = results.save(tmp_path, scores, labels, [f"c{i}" for i in range(5)], {}, config)
  predicted = (scores >= threshold).astype(int)
  assert m["f1_micro"] == pytest.approx(skm.f1_score(labels, predicted, average="micro"), abs=1e-6)
  assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(labels, predicted), abs=1e-6)
  top = np.zeros_like(predicted)
  np.put_along_axis(top, np.argsort(-scores, axis=1, kind="stable")[:, :2], 1, axis=1)
  if topk_min_score:
    top &= predicted
  tp = (top * labels).sum()
  assert m["OP_top2"] == pytest.approx(tp / top.sum(), abs=1e-6)
  assert m["OR_top2"] == pytest.approx(tp / labels.sum(), abs=1e-6)
  doc = json.loads((tmp_path / "metrics.json").read_text())
  assert doc["meta"]["threshold"] == threshold and doc["meta"]["topk_min_score"] == topk_min_score
