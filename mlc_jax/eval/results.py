"""One evaluation result on disk (metrics.json, scores.npz, plots), as the report reads it."""
import json
import pathlib

import numpy as np

from mlc_jax import metrics, workdir as workdir_lib
from mlc_jax.eval import plots


def jsonable(value):
  """numpy arrays and scalars -> lists and Python numbers (recursively)."""
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def compute(scores, labels, config):
  """metrics.compute with the config's eval options (k capped at the classes a result covers)."""
  e = config.eval
  return metrics.compute(scores, labels, k=min(int(e.k), scores.shape[1]), threshold=float(e.threshold),
                         topk_min_score=bool(e.topk_min_score))


def save(directory, scores, labels, names, meta, config, *, columns=None, images=None,
         tuned=None, extra=None):
  """Computes every metric and writes directory/{metrics.json, scores.npz, ap_per_class.png,
  pr_curves.png[, examples.png]}; returns the metrics dict (JSON-ready). Callers write into a
  workdir.staged() folder, so a result appears whole or not at all.

  columns: indices of the classes the metrics cover (the baseline leaves unmapped labels out);
  tuned: {'thresholds': (C,), 'tuned_on': split} -> metrics at those per-class thresholds too.
  extra: more top-level entries of metrics.json (a mixture's `sources`).
  """
  directory = pathlib.Path(directory)
  columns = np.arange(len(names)) if columns is None else np.asarray(columns)
  s, y, kept = scores[:, columns], labels[:, columns], [names[i] for i in columns]
  m = jsonable(compute(s, y, config))
  per_class = metrics.per_class_table(s, y, kept, threshold=float(config.eval.threshold))
  e = config.eval
  doc = {"meta": dict(meta, num_images=int(len(scores)), k=min(int(e.k), len(kept)),
                      threshold=float(e.threshold), topk_min_score=bool(e.topk_min_score)),
         "metrics": m, "per_class": per_class}
  if tuned is not None:
    t = np.asarray(tuned["thresholds"], np.float32)[columns]
    # 0/1 decisions at t per class, scored at 0.5: only the thresholded metrics are kept from it,
    # as rank metrics (mAP, top-k, LRAP) do not depend on thresholds.
    decisions = (s >= t).astype(np.float32)
    tuned_metrics = metrics.compute(decisions, y, k=doc["meta"]["k"], threshold=0.5)
    thresholded = [k for k in tuned_metrics if k.startswith(("CP", "CR", "CF1", "OP", "OR", "OF1",
                                                             "f1_", "jaccard_", "hamming",
                                                             "subset", "zero_one"))]
    doc["tuned"] = {"tuned_on": tuned["tuned_on"], "thresholds": t.tolist(),
                    "metrics": jsonable({k: tuned_metrics[k] for k in thresholded
                                         if "_top" not in k})}
  if not workdir_lib.is_chief():  # every process computes, one writes
    return m
  directory.mkdir(parents=True, exist_ok=True)
  doc.update(extra or {})
  (directory / "metrics.json").write_text(json.dumps(jsonable(doc), indent=1))
  np.savez_compressed(directory / "scores.npz", scores=scores.astype(np.float32),
                      labels=labels.astype(np.int8), names=np.asarray(names), columns=columns)
  plots.ap_bars(per_class, directory / "ap_per_class.png")
  plots.pr_curves(s, y, kept, np.asarray(m["AP"]), directory / "pr_curves.png")
  if images is not None and len(images):
    n = len(images)
    top = np.argsort(-s[:n], axis=1, kind="stable")[:, :3]
    predicted = [[(kept[j], float(s[i, j])) for j in top[i]] for i in range(n)]
    truth = [[kept[j] for j in np.flatnonzero(y[i] > 0.5)] for i in range(n)]
    plots.image_grid(images, truth, predicted, directory / "examples.png")
  return m
