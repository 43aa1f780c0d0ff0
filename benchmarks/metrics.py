"""mlc_jax.metrics.compute against the sklearn equivalents of all its keys, measured in the same run.

Run: .venv/bin/python benchmarks/metrics.py [--n 50000] [--c 81] [--repeats 3]
Data: random scores rounded to 2 decimals (many ties) and imbalanced multi-hot labels (COCO-sized
C=81). Prints the best-of-repeats time of each side, compute's first call (with compilation), and the
ratio sklearn / compute. Goal (issue 3): >= 15x on a 2-core CPU.
"""
import argparse
import time

import numpy as np
from sklearn import metrics as skm

from mlc_jax import metrics


def sklearn_all(scores, labels, k=3, threshold=0.5):
  """Every key of metrics.compute, from sklearn (numpy where sklearn has no such metric)."""
  y, pred = labels, (scores >= threshold).astype(np.int8)
  has_pos = y.sum(0) > 0
  out = {"AP": skm.average_precision_score(y[:, has_pos], scores[:, has_pos], average=None)}
  out["mAP"] = out["AP"].mean()
  for name, p in (("", pred), (f"_top{k}", _top_k(scores, k))):
    precision, recall, _, _ = skm.precision_recall_fscore_support(y, p, average=None, zero_division=0)
    out["CP" + name], out["CR" + name] = precision[has_pos].mean(), recall[has_pos].mean()
    op, orr, of1, _ = skm.precision_recall_fscore_support(y, p, average="micro", zero_division=0)
    out["OP" + name], out["OR" + name], out["OF1" + name] = op, orr, of1
  for average in ("macro", "micro", "samples"):
    out[f"f1_{average}"] = skm.f1_score(y, pred, average=average, zero_division=1)
    out[f"jaccard_{average}"] = skm.jaccard_score(y, pred, average=average, zero_division=1)
  out["hamming_loss"] = skm.hamming_loss(y, pred)
  out["subset_accuracy"] = skm.accuracy_score(y, pred)
  out["zero_one_loss"] = skm.zero_one_loss(y, pred)
  out["lrap"] = skm.label_ranking_average_precision_score(y, scores)
  out["ranking_loss"] = skm.label_ranking_loss(y, scores)
  labelled = y.sum(1) > 0
  out["coverage"] = skm.coverage_error(y[labelled], scores[labelled])
  top1 = scores[labelled].argmax(1)
  out["one_error"] = np.mean(y[labelled][np.arange(labelled.sum()), top1] == 0)
  return out


def _top_k(scores, k):
  """Exactly k predictions per row, ties to the lower class index (stable sort of -score)."""
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  pred = np.zeros(scores.shape, np.int8)
  np.put_along_axis(pred, order, 1, axis=1)
  return pred


def _best_of(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return min(times), result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=50_000)
  parser.add_argument("--c", type=int, default=81)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  scores = np.round(rng.random((args.n, args.c)), 2).astype(np.float32)
  labels = (rng.random((args.n, args.c)) < rng.uniform(0.002, 0.2, args.c)).astype(np.int8)

  start = time.perf_counter()
  ours = metrics.compute(scores, labels)
  first = time.perf_counter() - start
  t_ours, ours = _best_of(lambda: metrics.compute(scores, labels), args.repeats)
  t_sk, ref = _best_of(lambda: sklearn_all(scores, labels), args.repeats)
  worst = max(float(np.max(np.abs(np.asarray(ours[key]) - value))) for key, value in ref.items()
              if key != "AP")
  worst = max(worst, float(np.max(np.abs(ours["AP"][labels.sum(0) > 0] - ref["AP"]))))

  print(f"metrics.compute vs sklearn, N={args.n}, C={args.c}, {len(ref)} keys "
        f"(max |difference| {worst:.1e}), best of {args.repeats}")
  print(f"{'':34}{'seconds':>10}{'sklearn / this':>16}")
  print(f"{'sklearn equivalents':34}{t_sk:10.3f}{1.0:16.1f}")
  print(f"{'compute (first call, compiles)':34}{first:10.3f}{t_sk / first:16.1f}")
  print(f"{'compute (compiled)':34}{t_ours:10.3f}{t_sk / t_ours:16.1f}")


if __name__ == "__main__":
  main()
