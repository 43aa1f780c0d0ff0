"""mlc_jax.metrics.compute against the sklearn equivalents of all its keys, measured in the same run.

Run: .venv/bin/python benchmarks/metrics.py [--n 50000] [--c 81] [--repeats 3] [--unknown 0.2]
Data: random scores rounded to 2 decimals (many ties) and imbalanced multi-hot labels (COCO-sized
C=81); the second row makes `--unknown` of the label entries -1 (unknown). Prints the best-of-repeats
time of each side, compute's first call (with compilation), and the ratios. Goals: >= 15x sklearn on
a 2-core CPU (issue 3), with and without unknowns; unknowns no more than 15% slower (issue 13).

sklearn has no mask, so its side with unknowns (`sklearn_known`) hands it the known entries in the
shape where its own definitions give the restricted metric exactly: unknown entries become absent
and unpredicted (which leaves every tp/fp/fn count of a class and of an image as it is) and score
below every known score (so they rank last: AP, LRAP, coverage and mis-ordered pairs are unchanged);
the per-image means take the images with a known entry, the macro means the classes with one, Hamming
loss divides by the known entries and ranking loss rescales each image's pair count by sample_weight.
This is the cheapest exact sklearn route (per-class or per-image loops would be far slower);
tests/test_metrics.py checks compute against those loops.
"""
import argparse
import pathlib
import sys
import time

import numpy as np
from sklearn import metrics as skm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from mlc_jax import metrics  # noqa: E402


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


def sklearn_known(scores, labels, k=3, threshold=0.5):
  """sklearn_all's keys on the known entries of `labels` (1/0/-1), through sklearn (module docstring)."""
  known = labels != -1
  y = np.where(known, labels, 0).astype(np.int8)
  low = np.where(known, scores, scores.min() - 1)  # unknown: below every known score
  pred = ((scores >= threshold) & known).astype(np.int8)
  has_pos, annotated, imaged = y.sum(0) > 0, known.any(0), known.any(1)
  out = {"AP": skm.average_precision_score(y[:, has_pos], low[:, has_pos], average=None)}
  out["mAP"] = out["AP"].mean()
  top = _top_k(np.where(known, scores, -np.inf), k) & known
  for name, p in (("", pred), (f"_top{k}", top)):
    precision, recall, _, _ = skm.precision_recall_fscore_support(y, p, average=None, zero_division=0)
    out["CP" + name], out["CR" + name] = precision[has_pos].mean(), recall[has_pos].mean()
    op, orr, of1, _ = skm.precision_recall_fscore_support(y, p, average="micro", zero_division=0)
    out["OP" + name], out["OR" + name], out["OF1" + name] = op, orr, of1
  for average in ("macro", "micro"):
    f1 = skm.f1_score(y, pred, average=None if average == "macro" else average, zero_division=1)
    jac = skm.jaccard_score(y, pred, average=None if average == "macro" else average,
                            zero_division=1)
    out[f"f1_{average}"] = f1[annotated].mean() if average == "macro" else f1
    out[f"jaccard_{average}"] = jac[annotated].mean() if average == "macro" else jac
  yi, pi, si = y[imaged], pred[imaged], low[imaged]
  out["f1_samples"] = skm.f1_score(yi, pi, average="samples", zero_division=1)
  out["jaccard_samples"] = skm.jaccard_score(yi, pi, average="samples", zero_division=1)
  out["hamming_loss"] = skm.hamming_loss(y, pred) * y.size / known.sum()
  out["subset_accuracy"] = skm.accuracy_score(yi, pi)
  out["zero_one_loss"] = skm.zero_one_loss(yi, pi)
  out["lrap"] = skm.label_ranking_average_precision_score(yi, si)
  # sklearn divides an image's mis-ordered pairs by positives x (negatives + unknown)
  negatives, unknown = (known[imaged] & (yi == 0)).sum(1), (~known[imaged]).sum(1)
  weight = np.where(negatives > 0, (negatives + unknown) / np.maximum(negatives, 1), 1.0)
  out["ranking_loss"] = (skm.label_ranking_loss(yi, si, sample_weight=weight)
                         * weight.sum() / len(weight))
  labelled = y.sum(1) > 0
  out["coverage"] = skm.coverage_error(y[labelled], low[labelled])
  top1 = low[labelled].argmax(1)
  out["one_error"] = np.mean(y[labelled][np.arange(labelled.sum()), top1] == 0)
  return out


def _top_k(scores, k):
  """Exactly k predictions per row, ties to the lower class index (stable sort of -score)."""
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  pred = np.zeros(scores.shape, np.int8)
  np.put_along_axis(pred, order, 1, axis=1)
  return pred


def _worst_difference(ours, ref, has_pos):
  """Largest |ours - ref| over ref's keys (AP over the classes with a positive)."""
  worst = max(float(np.max(np.abs(np.asarray(ours[key]) - value))) for key, value in ref.items()
              if key != "AP")
  return max(worst, float(np.max(np.abs(ours["AP"][has_pos] - ref["AP"]))))


def _interleaved_best(fns, repeats):
  """Best seconds of each fn, the fns taking turns (load on a shared machine hits both alike)."""
  best = [float("inf")] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      best[i] = min(best[i], common.best_of(fn, 1)[0])
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=50_000)
  parser.add_argument("--c", type=int, default=81)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--unknown", type=float, default=0.2, help="fraction of -1 label entries")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  scores = np.round(rng.random((args.n, args.c)), 2).astype(np.float32)
  labels = (rng.random((args.n, args.c)) < rng.uniform(0.002, 0.2, args.c)).astype(np.int8)
  partial = np.where(rng.random(labels.shape) < args.unknown, -1, labels).astype(np.int8)

  start = time.perf_counter()
  ours = metrics.compute(scores, labels)
  first = time.perf_counter() - start
  ours_partial = metrics.compute(scores, partial)
  # the two compute calls take turns, so their ratio sees the same load
  t_ours, t_partial = _interleaved_best([lambda: metrics.compute(scores, labels),
                                         lambda: metrics.compute(scores, partial)], args.repeats)
  t_sk, ref = common.best_of(lambda: sklearn_all(scores, labels), args.repeats)
  t_sk_partial, ref_partial = common.best_of(lambda: sklearn_known(scores, partial), args.repeats)
  worst = _worst_difference(ours, ref, labels.sum(0) > 0)
  worst_partial = _worst_difference(ours_partial, ref_partial, (partial == 1).sum(0) > 0)

  print(f"metrics.compute vs sklearn, N={args.n}, C={args.c}, {len(ref)} keys "
        f"(max |difference| {worst:.1e}; with {args.unknown:.0%} unknown {worst_partial:.1e}), "
        f"best of {args.repeats}")
  print(f"{'':40}{'seconds':>10}{'sklearn / this':>16}")
  print(f"{'sklearn equivalents':40}{t_sk:10.3f}{1.0:16.1f}")
  print(f"{'compute (first call, compiles)':40}{first:10.3f}{t_sk / first:16.1f}")
  print(f"{'compute (compiled)':40}{t_ours:10.3f}{t_sk / t_ours:16.1f}")
  unknown = f"{args.unknown:.0%} unknown"
  print(f"{'sklearn on the known entries, ' + unknown:40}{t_sk_partial:10.3f}{1.0:16.1f}")
  print(f"{'compute (compiled), ' + unknown:40}{t_partial:10.3f}{t_sk_partial / t_partial:16.1f}")
  print(f"compute with {unknown} / without: {t_partial / t_ours:.3f} of the time (goal <= 1.15)")
  rows = [common.row("metrics.compute, every key (compiled)", 1 / t_ours, 1 / t_sk,
                     "sklearn equivalents", unit="runs/s"),
          common.row(f"metrics.compute, every key, {unknown} (compiled)", 1 / t_partial,
                     1 / t_sk_partial, "sklearn on the known entries", unit="runs/s"),
          common.row(f"metrics.compute with {unknown} vs without (goal >= 0.87, i.e. <= 15% slower)",
                     1 / t_partial, 1 / t_ours, "compute without unknowns", unit="runs/s")]
  common.emit("metrics", rows, n=args.n, c=args.c, unknown=args.unknown,
              max_difference=max(worst, worst_partial))


if __name__ == "__main__":
  main()
