"""The multi-label metrics: `compute` (every metric at once), `per_class_table`, `tune_thresholds`.

A label entry is 1 (present), 0 (absent) or -1 (unknown: a VOC difficult object, a class another
dataset annotates, a partial annotation); every metric uses the known entries only. The arithmetic
runs in jitted, vectorised JAX kernels (mlc_jax.metrics.kernels) over chunks, so N = 1e6 images by
C = 1e3 classes fits in memory; the host only sums the chunks' counts and averages per-image values
in float64. Scores are compared in float32.
"""
import jax.numpy as jnp
import numpy as np

from mlc_jax.errors import UserError
from mlc_jax.metrics import kernels

# elements per jitted call: a few hundred MiB of temporaries at most
_ROW_CHUNK_ELEMENTS = 1 << 23
_CLASS_BLOCK_ELEMENTS = 1 << 24


def _check(scores, labels, k=1):
  """(scores, labels, nonneg) as numpy arrays after the checks a user's mistake would fail.

  `nonneg` (all scores >= 0, the usual probabilities) lets the kernels use their faster sort.
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim != 2 or labels.ndim != 2:
    raise UserError(f"metrics: scores and labels must be 2-D (images, classes); got shapes "
                    f"{scores.shape} and {labels.shape}")
  if scores.shape != labels.shape:
    raise UserError(f"metrics: scores {scores.shape} and labels {labels.shape} differ in shape; "
                    "pass one row per image and one column per class in both")
  if scores.size == 0:
    raise UserError(f"metrics: empty input of shape {scores.shape}; pass at least one image and class")
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    raise UserError(f"metrics: scores must be floating-point probabilities, got dtype {scores.dtype}")
  if scores.dtype not in (np.float32, np.float64):  # bfloat16/float16 model outputs
    scores = scores.astype(np.float32)
  if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)
          or np.issubdtype(labels.dtype, np.floating)):
    raise UserError(f"metrics: labels must be a multi-hot array of 0/1, -1 for unknown (bool, int "
                    f"or float), got dtype {labels.dtype}")
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[1]:
    raise UserError(f"metrics: k={k!r} must be an integer between 1 and the number of classes "
                    f"({scores.shape[1]})")
  return scores, labels, bool(np.min(scores) >= 0)


def _label_codes(labels):
  """int8 label codes for the kernels (1, 0, -1 unknown, 2 any other value): one compiled shape for
  every dtype."""
  if labels.dtype == bool:
    return labels.view(np.int8)
  if np.issubdtype(labels.dtype, np.integer):  # the pipeline's int8 targets: one pass
    return np.where((labels >= -1) & (labels <= 1), labels, 2).astype(np.int8)
  return kernels.label_codes(labels, np)


def _row_stats(scores, labels, *, threshold, k, topk_min_score, nonneg):
  """Runs kernels.row_stats over row chunks; returns per-class int64 sums and per-row numpy arrays."""
  n, c = scores.shape
  size = max(1, _ROW_CHUNK_ELEMENTS // c)
  size = n if n <= size else size
  sums, rows = {}, {}
  for start in range(0, n, size):
    s, y = scores[start:start + size], _label_codes(labels[start:start + size])
    n_valid = s.shape[0]
    if n_valid < size:  # pad the last chunk so every chunk shares one compiled shape
      s = np.concatenate([s, np.zeros((size - n_valid, c), s.dtype)])
      y = np.concatenate([y, np.zeros((size - n_valid, c), y.dtype)])
    out = kernels.row_stats(s, y, n_valid, np.float32(threshold), k=int(k),
                            topk_min_score=bool(topk_min_score), nonneg=nonneg)
    for name, value in out.items():
      value = np.asarray(value)
      if name.endswith("_r"):
        rows.setdefault(name, []).append(value[:n_valid])
      else:
        sums[name] = sums.get(name, 0) + value.astype(np.int64)
  if sums["bad_labels"]:
    raise UserError(f"metrics: {int(sums['bad_labels'])} label entries are not 0 or 1, or -1 for "
                    "unknown; labels must be multi-hot (binarise them first; mark unknown entries -1)")
  if sums["non_finite"]:
    raise UserError(f"metrics: {int(sums['non_finite'])} scores are NaN or infinite; check the model "
                    "outputs (e.g. a diverged checkpoint) before evaluating")
  return sums, {name: np.concatenate(parts) for name, parts in rows.items()}


def _by_class_blocks(kernel, scores, labels, nonneg):
  """Runs a column kernel over blocks of classes (each block sees every image); concatenates outputs."""
  n, c = scores.shape
  width = min(c, max(1, _CLASS_BLOCK_ELEMENTS // n))
  parts = []
  for start in range(0, c, width):
    s, y = scores[:, start:start + width], _label_codes(labels[:, start:start + width])
    got = s.shape[1]
    if got < width:  # pad the last block: padded classes are dropped below
      s = np.concatenate([s, np.zeros((n, width - got), s.dtype)], axis=1)
      y = np.concatenate([y, np.zeros((n, width - got), y.dtype)], axis=1)
    out = kernel(s, y, nonneg=nonneg)
    out = out if isinstance(out, tuple) else (out,)
    parts.append([np.asarray(o)[:got] for o in out])
  return [np.concatenate(column) for column in zip(*parts)]


def _ratio(num, den):
  """num / den elementwise in float64, 0 where den is 0 (nothing is ever NaN)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _harmonic(p, r):
  return float(_ratio(2 * p * r, p + r))


def _prf(tp, predicted, positives, has_pos):
  """CP, CR, CF1 (class means over classes with a positive) and OP, OR, OF1 (pooled over all labels)."""
  cp = float(np.mean(_ratio(tp, predicted)[has_pos])) if has_pos.any() else 0.0
  cr = float(np.mean(_ratio(tp, positives)[has_pos])) if has_pos.any() else 0.0
  op = float(_ratio(tp.sum(), predicted.sum()))
  orr = float(_ratio(tp.sum(), positives.sum()))
  return cp, cr, _harmonic(cp, cr), op, orr, _harmonic(op, orr)


def _zero_one_as(num, den):
  """sklearn's zero_division=1: num / den, 1 where den is 0."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.ones(np.broadcast(num, den).shape), where=den != 0)


def _average_precision(scores, labels, positives, nonneg):
  (sums,) = _by_class_blocks(kernels.precision_sums, scores, labels, nonneg)
  return _ratio(sums, positives)


def _mean_over(values, where):
  """Mean of values[where] in float64; 0.0 when nothing is selected (nothing is ever NaN)."""
  return float(np.mean(values[where], dtype=np.float64)) if where.any() else 0.0


def compute(scores, labels, *, k=3, threshold=0.5, topk_min_score=False):
  """All multi-label metrics of `scores` (N, C) probabilities against `labels` (N, C).

  `labels`: 1 present, 0 absent, -1 unknown, as int8 (the pipeline's targets), bool, or any integer
  or float array holding only those values. Every metric uses the known entries only, under one of
  three rules (without any -1 each is exactly the metric of the complete data):
  - per class, over that class's known images: `AP` (sklearn's average_precision_score with ties; 0
    for a class without a known positive), `mAP`, and `CP CR` (and their harmonic mean `CF1`) at
    `score >= threshold` and with suffix `_top{k}` for the top-k labels. Classes without a known
    positive are left out of these means and listed in `classes_without_positives`. sklearn's
    `f1_macro` and `jaccard_macro` (zero_division=1) average over every class with a known entry;
    classes nobody annotated are listed in `classes_without_known_labels`.
  - per image, over that image's known classes, averaged over images with a known entry (their count
    left out is `images_without_known_labels`): `f1_samples`, `jaccard_samples` (zero_division=1),
    `subset_accuracy` (every known entry right), `zero_one_loss`, `lrap`, `ranking_loss`; and over
    images with a known positive, `coverage` (sklearn's coverage_error) and `one_error` (top-scored
    known class wrong, lower class index first among ties). The top-k labels of an image are its k
    best-scored known classes (all of them when it has fewer than k; ties go to the lower class
    index; `topk_min_score=True` also requires score >= threshold, the ML-GCN variant, named in
    `topk_variant`).
  - pooled over all known entries: `OP OR OF1` (and `_top{k}`), `f1_micro`, `jaccard_micro` and
    `hamming_loss` (wrong known entries / known entries).
  What was left out: `unknown_per_class` (-1 entries of each class; their sum is every -1 entry),
  `unknown_fraction` (-1 entries / all entries) and `images_without_known_labels` (indices).
  Returns Python floats, numpy arrays and the `topk_variant` string.
  Raises UserError for mismatched shapes or dtypes, labels other than 0/1/-1, NaN/inf scores, k
  outside 1..C and empty input.
  """
  scores, labels, nonneg = _check(scores, labels, k)
  sums, rows = _row_stats(scores, labels, threshold=threshold, k=k, topk_min_score=topk_min_score,
                          nonneg=nonneg)
  positives, predicted, tp, known = sums["positives"], sums["predicted"], sums["tp"], sums["known"]
  has_pos, annotated = positives > 0, known > 0
  ap = _average_precision(scores, labels, positives, nonneg)
  out = {"AP": ap.astype(np.float32),
         "mAP": _mean_over(ap, has_pos),
         "classes_without_positives": np.flatnonzero(~has_pos)}
  names = ("CP", "CR", "CF1", "OP", "OR", "OF1")
  out.update(zip(names, _prf(tp, predicted, positives, has_pos)))
  values = _prf(sums["tp_k"], sums["predicted_k"], positives, has_pos)
  out.update((f"{name}_top{k}", value) for name, value in zip(names, values))
  out["topk_variant"] = (f"top{k} with score >= {threshold}" if topk_min_score
                         else f"exactly top{k} per image")

  imaged = rows["known_r"] > 0
  fp, fn = predicted - tp, positives - tp
  out["f1_macro"] = _mean_over(_zero_one_as(2 * tp, 2 * tp + fp + fn), annotated)
  out["f1_micro"] = float(_zero_one_as(2 * tp.sum(), (2 * tp + fp + fn).sum()))
  out["f1_samples"] = _mean_over(rows["f1_r"], imaged)
  out["jaccard_macro"] = _mean_over(_zero_one_as(tp, tp + fp + fn), annotated)
  out["jaccard_micro"] = float(_zero_one_as(tp.sum(), (tp + fp + fn).sum()))
  out["jaccard_samples"] = _mean_over(rows["jaccard_r"], imaged)
  out["hamming_loss"] = float(_ratio(fp.sum() + fn.sum(), known.sum()))
  out["subset_accuracy"] = _mean_over(rows["exact_r"], imaged)
  out["zero_one_loss"] = 1.0 - out["subset_accuracy"] if imaged.any() else 0.0
  out["lrap"] = _mean_over(rows["lrap_r"], imaged)
  out["ranking_loss"] = _mean_over(rows["ranking_loss_r"], imaged)
  labelled = rows["labelled_r"]
  out["coverage"] = _mean_over(rows["coverage_r"], labelled)
  out["one_error"] = 1.0 - _mean_over(rows["top_is_true_r"], labelled) if labelled.any() else 0.0
  out["unknown_per_class"] = scores.shape[0] - known
  out["unknown_fraction"] = float(_ratio(out["unknown_per_class"].sum(), labels.size))
  out["images_without_known_labels"] = np.flatnonzero(~imaged)
  out["classes_without_known_labels"] = np.flatnonzero(~annotated)
  return out


def per_class_table(scores, labels, names, *, threshold=0.5):
  """One dict per class, in class order: name, AP, precision, recall, F1 (at score >= threshold),
  support (known positives) and unknown (images whose label for the class is -1).

  Each is over the class's known images. Precision is 0 for a class never predicted, recall 0 for a
  class without known positives, F1 their harmonic mean (0 when both are 0): the per-class terms of
  CP, CR and CF1.
  """
  scores, labels, nonneg = _check(scores, labels)
  if len(names) != scores.shape[1]:
    raise UserError(f"metrics: {len(names)} class names for {scores.shape[1]} score columns; pass "
                    "one name per class (the workdir's labels.txt)")
  sums, _ = _row_stats(scores, labels, threshold=threshold, k=1, topk_min_score=False, nonneg=nonneg)
  positives, tp = sums["positives"], sums["tp"]
  ap = _average_precision(scores, labels, positives, nonneg)
  precision, recall = _ratio(tp, sums["predicted"]), _ratio(tp, positives)
  f1 = _ratio(2 * precision * recall, precision + recall)
  unknown = scores.shape[0] - sums["known"]
  return [{"name": str(name), "AP": float(ap[i]), "precision": float(precision[i]),
           "recall": float(recall[i]), "F1": float(f1[i]), "support": int(positives[i]),
           "unknown": int(unknown[i])}
          for i, name in enumerate(names)]


def tune_thresholds(scores, labels):
  """Per class, the threshold t maximising that class's F1 of `score >= t` on its known (validation)
  images.

  t is always one of the class's known scores, so every known image scored t or above is predicted
  (a tied run is never split); among thresholds with equal F1 the highest wins. A class without a
  known positive gets the next float32 above its highest score (known or not), so it predicts
  nothing on this data. Returns (C,) float32.
  """
  scores, labels, nonneg = _check(scores, labels)
  sums, _ = _row_stats(scores, labels, threshold=0.5, k=1, topk_min_score=False, nonneg=nonneg)
  threshold, _, top = _by_class_blocks(kernels.best_f1_thresholds, scores, labels, nonneg)
  above_top = np.nextafter(top.astype(np.float32), np.float32(np.inf))
  return np.where(sums["positives"] > 0, threshold, above_top).astype(np.float32)
