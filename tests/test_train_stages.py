"""The finetune stage's recipe as data: batch-norm policies, the EMA of the weights, accumulation.

Each against an independent reference: the untouched starting values, a numpy EMA of the recorded
trajectory, one large-batch step.
"""
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import default_config
from mlc_jax import models, parallel
from mlc_jax.train import loop, stages

LOWER = tuple(f"backbone/block{b}_" for b in range(1, 5))


def _config(**finetune):
  c = default_config()
  c.image_size, c.model.width, c.model.weights, c.head.hidden = 32, 1 / 16, "", (16,)
  c.model.batch_norm = True
  c.augment.update(flip=False, zoom=0.0, rotation=0.0)
  c.finetune.update(dict(dict(learning_rate=0.05, momentum=0.9, unfreeze_blocks="1"), **finetune))
  return c


def _batch(n=8, seed=0, classes=4):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          "labels": (rng.random((n, classes)) < 0.5).astype(np.float32),
          "mask": np.ones(n, bool)}


def _train(config, steps=3, model=None, batches=None):
  """`steps` finetune steps -> (before, after) flat parameter/statistic dicts, the final state."""
  model = model or models.build_model(config, 4, rngs=nnx.Rngs(0))
  before = models.flat_params(model)
  p = loop.prepare(stages.finetune_stage(config, model, steps_per_epoch=steps), config,
                   parallel.mesh())
  state = p.state
  for i in range(steps):
    batch = batches[i] if batches is not None else _batch(seed=i)
    state = p.train_step(state, p.frozen, batch, jax.random.PRNGKey(0), i)
  nnx.update(model, state.trainable, state.stats)
  return before, models.flat_params(model), state


def _changed(before, after):
  return {k for k in before if not np.array_equal(before[k], after[k])}


def test_frozen_blocks_batch_norm_stays_frozen_by_default():
  before, after, _ = _train(_config())
  changed = _changed(before, after)
  lower = {k for k in before if k.startswith(LOWER)}
  assert lower and not (changed & lower)  # kernels, BN scale/bias AND running mean/variance
  for name in ("kernel", "scale", "mean", "var"):
    assert any(k.startswith("backbone/block5_") and k.endswith(name) for k in changed), name


def test_all_inference_freezes_every_batch_norm_statistic():
  before, after, _ = _train(_config(batch_norm="all_inference"))
  changed = _changed(before, after)
  assert not {k for k in changed if k.endswith(("/mean", "/var"))}
  assert "backbone/block5_conv1/kernel" in changed and "backbone/block5_bn1/scale" in changed
  assert not (changed & {k for k in before if k.startswith(LOWER)})


def test_train_policy_updates_every_batch_norm_statistic():
  before, after, _ = _train(_config(batch_norm="train"))
  changed = _changed(before, after)
  stats = {k for k in before if k.endswith(("/mean", "/var"))}
  assert stats <= changed  # the frozen blocks' running statistics too (the old behaviour)
  assert not {k for k in changed if k.startswith(LOWER) and not k.endswith(("/mean", "/var"))}


def test_frozen_batch_norm_normalises_like_inference():
  # With every block frozen, the training forward of the backbone is the features stage's.
  config = _config(unfreeze_blocks="0")
  model = models.build_model(config, 4, rngs=nnx.Rngs(0))
  stages.finetune_stage(config, model)  # sets each layer's mode
  images = _batch(4)["image"]
  np.testing.assert_array_equal(np.asarray(model.backbone(images, train=True)),
                                np.asarray(model.backbone(images, train=False)))
  config.finetune.batch_norm = "train"
  stages.finetune_stage(config, model)
  assert not np.allclose(np.asarray(model.backbone(images, train=True)),
                         np.asarray(model.backbone(images, train=False)))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_moving_average_of_the_trajectory(warmup):
  """finetune.ema_decay = 0.6, finetune.ema_warmup on and off: the EMA equals a numpy average of
  the recorded weights with decay min(0.6, (1 + n) / (10 + n)) after n updates, or 0.6."""
  config = _config(ema_decay=0.6, ema_warmup=warmup)
  model = models.build_model(config, 4, rngs=nnx.Rngs(0))
  p = loop.prepare(stages.finetune_stage(config, model, steps_per_epoch=4), config,
                   parallel.mesh())
  flat = lambda tree: {optim_path(k): np.asarray(v) for k, v in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  state = p.state
  average = flat({"trainable": state.trainable, "stats": state.stats})
  for i in range(4):
    state = p.train_step(state, p.frozen, _batch(seed=i), jax.random.PRNGKey(0), i)
    weights = flat({"trainable": state.trainable, "stats": state.stats})
    d = min(0.6, (1 + (i + 1)) / (10 + (i + 1))) if warmup else 0.6
    average = {k: d * average[k] + (1 - d) * weights[k] for k in weights}
  got = flat(state.ema)
  assert got.keys() == average.keys()
  for k in got:
    np.testing.assert_allclose(got[k], average[k], rtol=2e-6, atol=1e-7, err_msg=k)
  assert any(not np.allclose(got[k], weights[k]) for k in got)  # not just the weights


def optim_path(path):
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def test_accumulating_4_batches_of_8_is_one_step_of_32():
  config = _config(accumulate_steps=4)
  config.model.batch_norm, config.head.dropout = False, 0.0  # batch statistics would differ
  big = _batch(32, seed=3)
  micro = [{k: v[8 * i:8 * (i + 1)] for k, v in big.items()} for i in range(4)]
  _, accumulated, _ = _train(config, steps=4, batches=micro)
  one = ml_collections.ConfigDict(config.to_dict())
  one.finetune.accumulate_steps = 1
  before, single, _ = _train(one, steps=1, batches=[big])
  assert _changed(before, single)
  for k in single:
    np.testing.assert_allclose(accumulated[k], single[k], rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_head_stage_trains_with_head_optimizer(optimizer):
  """head.optimizer (default rmsprop) picks the head stage's update rule: its first update of a
  gradient g, by hand from Keras 3's rules at head.learning_rate 0.1 (SGD, momentum 0.9: -lr g;
  RMSprop, rho 0.9: -lr g / sqrt(0.1 g^2 + 1e-7); Adam: -lr sqrt(1 - .999) / .1 * .1 g /
  (sqrt(.001 g^2) + 1e-7))."""
  config = _config()
  config.head.optimizer, config.head.learning_rate = optimizer, 0.1
  stage = stages.head_stage(config, models.build_model(config, 4, rngs=nnx.Rngs(0)),
                            steps_per_epoch=5)
  g = np.array([0.5, -2.0, 0.01], np.float32)
  params = {"w": np.ones(3, np.float32)}
  updates, _ = stage.tx.update({"w": g}, stage.tx.init(params), params)
  lr = 0.1
  expected = {"sgd": -lr * g,
              "rmsprop": -lr * g / np.sqrt(0.1 * g.astype(np.float64) ** 2 + 1e-7),
              "adam": -lr * np.sqrt(1 - 0.999) / 0.1 * 0.1 * g
                      / (np.sqrt(0.001 * g.astype(np.float64) ** 2) + 1e-7)}[optimizer]
  np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5)
