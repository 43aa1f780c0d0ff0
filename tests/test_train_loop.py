"""mlc_jax.train.loop: the best-epoch rule and validation over padded batches, by hand."""
import math

import numpy as np
import pytest
from flax import nnx

from mlc_jax import models, parallel
from mlc_jax.data import pipeline, registry
from mlc_jax.train import features, loop, stages


@pytest.mark.parametrize("metric, values, bests, bad", [
    ("val_loss", [0.5, 0.3, 0.4, 0.35, 0.2], [0.5, 0.3, 0.3, 0.3, 0.2], [0, 0, 1, 2, 0]),
    ("val_mAP", [0.5, 0.3, 0.4, 0.6, 0.6], [0.5, 0.5, 0.5, 0.6, 0.6], [0, 1, 2, 0, 1]),
])
def test_early_stopping_counts_each_epoch_that_does_not_improve(metric, values, bests, bad):
  best, count = (math.inf if metric == "val_loss" else -math.inf), 0
  for value, want_best, want_bad in zip(values, bests, bad):
    best, count = loop.track_best(metric, best, count, value)
    assert (best, count) == (want_best, want_bad)


def test_validation_loss_averages_the_valid_images_of_a_padded_last_batch(shapes_config):
  # 32 validation images in batches of 24: the second batch holds 8 images and 16 padding rows.
  source = registry.get(shapes_config)
  model = models.build_model(shapes_config, len(source.labels), rngs=nnx.Rngs(0))
  config = shapes_config
  val = pipeline.Feed(source, "val", batch_size=24, train=False, config=config)
  assert val.steps_per_epoch == 2
  stage = stages.finetune_stage(config, model, val=val)
  mesh = parallel.mesh()
  p = loop.prepare(stage, config, mesh)
  loss, scores, labels = loop.run_validation(p.eval_step, p.state, p.frozen, val, mesh)
  np.testing.assert_array_equal(labels, source.label_matrix("val"))
  assert scores.shape == (32, len(source.labels))
  # numpy's binary cross-entropy of those 32 images' probabilities, averaged over images and classes
  s = np.clip(scores.astype(np.float64), 1e-12, 1 - 1e-12)
  expected = -np.mean(labels * np.log(s) + (1 - labels) * np.log(1 - s))
  assert loss == pytest.approx(expected, rel=1e-4)


def test_early_stopping_patience_stops_after_that_many_epochs_without_improvement(shapes_config,
                                                                                 tmp_path):
  """early_stopping_patience = 2 with a head that cannot move (head.learning_rate 0): epoch 1 sets
  the best val_loss and epochs 2 and 3 do not improve on it, so the stage stops after epoch 3 of
  6; with the default 0 it runs all 6."""
  from mlc_jax import workdir as workdir_lib
  config = shapes_config.copy_and_resolve_references()
  config.head.update(epochs=6, learning_rate=0.0, hidden=(8,), batch_size=16)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(48, 32)).astype(np.float32)  # width 1/16: 32 pooled features
  y = (rng.random((48, 8)) < 0.3).astype(np.int8)
  labels = [f"c{i}" for i in range(8)]
  for patience, epochs_run in ((0, 6), (2, 3)):
    config.early_stopping_patience = patience
    model = models.build_model(config, 8, rngs=nnx.Rngs(0))
    train = features.Feed(x[:32], y[:32], batch_size=16, train=True)
    val = features.Feed(x[32:], y[32:], batch_size=16, train=False)
    workdir = tmp_path / f"patience{patience}"
    run = loop.Run(config, str(workdir), None, labels, parallel.mesh())
    loop.fit(run, stages.head_stage(config, model, train, val))
    run.close()
    rows = workdir_lib.read_metrics(workdir)
    assert [r["epoch"] for r in rows] == list(range(1, epochs_run + 1)), patience
    assert len({r["val_loss"] for r in rows}) == 1  # nothing improved after epoch 1


def test_validation_row_uses_eval_k_threshold_and_topk_min_score(shapes_config):
  """The per-epoch validation metrics follow eval.k = 2, eval.topk_min_score = True and
  eval.threshold (set to the median top-2 score, so it drops half of them): val_OF1_top2 by hand
  from the validation scores, val_mAP by sklearn."""
  from sklearn import metrics as skm
  source = registry.get(shapes_config)
  config = shapes_config.copy_and_resolve_references()
  model = models.build_model(config, len(source.labels), rngs=nnx.Rngs(0))
  val = pipeline.Feed(source, "val", batch_size=16, train=False, config=config)
  mesh = parallel.mesh()
  p = loop.prepare(stages.finetune_stage(config, model, val=val), config, mesh)
  _, scores, labels = loop.run_validation(p.eval_step, p.state, p.frozen, val, mesh)
  top = np.zeros(scores.shape, bool)
  np.put_along_axis(top, np.argsort(-scores, axis=1, kind="stable")[:, :2], True, axis=1)
  threshold = float(np.median(scores[top]))
  config.eval.update(k=2, topk_min_score=True, threshold=threshold)
  row = loop._validation_row(p.eval_step, p.state, p.frozen, val, mesh, config)
  kept = top & (scores >= threshold)
  assert 0 < kept.sum() < top.sum()
  tp = (kept & (labels == 1)).sum()
  op, recall = tp / kept.sum(), tp / (labels == 1).sum()
  assert row["val_OF1_top2"] == pytest.approx(2 * op * recall / (op + recall), abs=1e-5)
  has = (labels == 1).any(0)
  assert row["val_mAP"] == pytest.approx(np.mean(
      [skm.average_precision_score(labels[:, c], scores[:, c]) for c in np.flatnonzero(has)]),
      abs=1e-5)
