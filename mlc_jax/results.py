"""Scoring a split with a model and saving a result (metrics.json, scores.npz, plots) for the report."""
import json
import pathlib

import jax
import numpy as np
from flax import nnx

from mlc_jax import metrics, plots, sharding, steps
from mlc_jax.data import pipeline


def _gather(x):
  """A global (sharded) array -> numpy on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def scorer(model, config, activation="sigmoid"):
  """fn(source, split, keep_images=16) -> (scores float32 (N, K), labels float32 (N, C), first images).

  One jitted forward per batch over the mesh's 'data' axis (parameters replicated), compiled once
  for every split scored with fn; padding rows of the last batch are dropped by the pipeline's
  mask, so every image counts once.
  """
  mesh = sharding.mesh()
  sharding.check_batch_size(int(config.eval_batch_size), mesh, "eval_batch_size")
  graphdef, state = nnx.split(model)
  state = sharding.replicate(state, mesh)
  forward = steps.make_predict_step(mesh, graphdef, activation)

  def score(source, split, keep_images=16):
    scores, labels, kept = [], [], []
    for batch in pipeline.batches(source, split, batch_size=int(config.eval_batch_size),
                                  train=False, config=config):
      device = sharding.shard_batch(batch, mesh)
      mask = _gather(device["mask"]).astype(bool)
      scores.append(_gather(forward(state, device["image"]))[mask])
      labels.append(_gather(device["labels"])[mask])
      if sum(len(k) for k in kept) < keep_images:
        kept.append(batch["image"][batch["mask"]][:keep_images])
    images = np.concatenate(kept)[:keep_images] if kept else np.zeros((0, 1, 1, 3), np.uint8)
    return (np.concatenate(scores).astype(np.float32), np.concatenate(labels).astype(np.float32),
            images)

  return score


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
  """metrics.compute with the config's eval options (k capped at the number of classes)."""
  e = config.eval
  return metrics.compute(scores, labels, k=min(int(e.k), scores.shape[1]), threshold=float(e.threshold),
                         topk_min_score=bool(e.topk_min_score))


def save(directory, scores, labels, names, meta, config, *, columns=None, images=None,
         tuned=None):
  """Computes every metric and writes directory/{metrics.json, scores.npz, ap_per_class.png,
  pr_curves.png[, examples.png]}; returns the metrics dict (JSON-ready).

  columns: indices of the classes the metrics cover (the baseline leaves unmapped labels out);
  tuned: {'thresholds': (C,), 'tuned_on': split} -> metrics at those per-class thresholds too.
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
  if jax.process_index() != 0:  # every process computes, one writes
    return m
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "metrics.json").write_text(json.dumps(jsonable(doc), indent=1))
  np.savez_compressed(directory / "scores.npz", scores=scores.astype(np.float32),
                      labels=labels.astype(np.float32), names=np.asarray(names), columns=columns)
  plots.ap_bars(per_class, directory / "ap_per_class.png")
  plots.pr_curves(s, y, kept, np.asarray(m["AP"]), directory / "pr_curves.png")
  if images is not None and len(images):
    n = len(images)
    top = np.argsort(-s[:n], axis=1, kind="stable")[:, :3]
    predicted = [[(kept[j], float(s[i, j])) for j in top[i]] for i in range(n)]
    truth = [[kept[j] for j in np.flatnonzero(y[i] > 0.5)] for i in range(n)]
    plots.image_grid(images, truth, predicted, directory / "examples.png")
  return m
