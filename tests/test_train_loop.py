"""mlc_jax.train.loop: the best-epoch rule and validation over padded batches, by hand."""
import math

import numpy as np
import pytest
from flax import nnx

from mlc_jax import models, parallel
from mlc_jax.data import pipeline, registry
from mlc_jax.train import loop, stages


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
