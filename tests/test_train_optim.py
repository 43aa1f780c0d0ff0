"""Freeze masks and optimizers from the config, against hand-written expectations."""
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import default_config
from mlc_jax import config as config_lib
from mlc_jax.train import optim
from mlc_jax.errors import UserError


def _tiny_model(include_top=False):
  from mlc_jax import models
  c = default_config()
  c.image_size, c.model.width, c.model.weights, c.model.include_top = 32, 1 / 16, "", include_top
  c.head.hidden = 8
  return models.build_model(c, 3)


def _trainable_layers(model, unfreeze, include_top=False):
  state = nnx.state(model, optim.trainable_filter(unfreeze, include_top))
  return sorted({"/".join(map(str, path[:2])) for path, _ in nnx.to_flat_state(state)})


HEAD = ["head/fc1", "head/predictions"]
BLOCK = {1: ["block1_conv1", "block1_conv2"], 2: ["block2_conv1", "block2_conv2"],
         3: ["block3_conv1", "block3_conv2", "block3_conv3"],
         4: ["block4_conv1", "block4_conv2", "block4_conv3"],
         5: ["block5_conv1", "block5_conv2", "block5_conv3"]}


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_trainable_filter_picks_the_top_blocks(n):
  model = _tiny_model()
  expected = HEAD + [f"backbone/{name}" for b in range(6 - n, 6) for name in BLOCK[b]]
  assert _trainable_layers(model, str(n)) == sorted(expected)


def test_all_and_include_top():
  model = _tiny_model(include_top=True)
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  everything = sorted({"/".join(map(str, p[:2])) for p, _ in flat})
  assert _trainable_layers(model, "all", True) == everything
  # fc1/fc2 sit above block 5: they train as soon as one block does, never with 0.
  assert "backbone/fc1" in _trainable_layers(model, "1", True)
  assert "backbone/fc2" in _trainable_layers(model, "1", True)
  assert _trainable_layers(model, "0", True) == HEAD


@pytest.mark.parametrize("bad", ["6", "-1", "two", 2.5, True])
def test_unfreeze_blocks_rejects_bad_values(bad):
  with pytest.raises(UserError, match="unfreeze_blocks"):
    config_lib.unfreeze_blocks(bad)
  assert config_lib.unfreeze_blocks(3) == 3 and config_lib.unfreeze_blocks("ALL") == "all"


def _one_update(tx, g, w=None):
  w = np.ones_like(g) if w is None else w
  state = tx.init(w)
  updates, _ = tx.update(g, state, w)
  return np.asarray(updates)


def test_rmsprop_is_keras_rmsprop():
  c = default_config().head
  c.learning_rate = 0.01
  g = np.array([0.5, -2.0], np.float32)
  # Keras: v = rho * 0 + (1 - rho) g^2; w -= lr * g / (sqrt(v) + 1e-7)
  expected = -0.01 * g / (np.sqrt(0.1 * g ** 2) + 1e-7)
  np.testing.assert_allclose(_one_update(optim.make(c, 10), g), expected, rtol=1e-5)


def test_sgd_momentum_weight_decay_and_clip():
  c = default_config().finetune
  c.learning_rate, c.momentum, c.weight_decay, c.grad_clip = 0.1, 0.9, 0.01, 1.0
  g = np.array([3.0, 4.0], np.float32)  # norm 5 -> clipped to 1
  w = np.array([2.0, -1.0], np.float32)
  tx = optim.make(c, 10)
  state = tx.init(w)
  u1, state = tx.update(g, state, w)
  clipped = g / 5.0 + 0.01 * w
  np.testing.assert_allclose(u1, -0.1 * clipped, rtol=1e-5)
  u2, _ = tx.update(g, state, w)
  np.testing.assert_allclose(u2, -0.1 * (clipped + 0.9 * clipped), rtol=1e-5)


def test_schedules():
  c = default_config().finetune
  c.learning_rate, c.epochs = 1.0, 4
  c.schedule = "cosine"
  lr = optim.schedule(c, 10)
  for step in (0, 10, 20, 40):
    assert float(lr(step)) == pytest.approx(0.5 * (1 + np.cos(np.pi * step / 40)), abs=1e-6)
  c.schedule = "step"
  lr = optim.schedule(c, 10)
  assert [float(lr(s)) for s in (0, 19, 21, 31)] == pytest.approx([1, 1, 0.1, 0.01])
  c.schedule, c.warmup_epochs = "constant", 1
  lr = optim.schedule(c, 10)
  assert [float(lr(s)) for s in (0, 5, 10, 30)] == pytest.approx([0, 0.5, 1, 1])
  c.schedule = "linear"
  with pytest.raises(UserError, match="schedule"):
    optim.schedule(c, 10)


def test_adamw_and_unknown_optimizer():
  c = default_config().finetune
  c.optimizer, c.learning_rate, c.weight_decay = "adamw", 0.1, 0.5
  g, w = np.array([1.0], np.float32), np.array([2.0], np.float32)
  # First Adam step is lr * sign(g); decoupled decay adds lr * wd * w.
  expected = [-0.1 - 0.1 * 0.5 * 2.0]
  np.testing.assert_allclose(_one_update(optim.make(c, 1), g, w), expected, rtol=1e-4)
  c.optimizer = "lbfgs"
  with pytest.raises(UserError, match="optimizer"):
    optim.make(c, 1)
