"""Parameter groups, freeze masks and optimizers from the config, against Keras 3 and optax."""
import jax
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
  c.head.hidden = (8,)
  return models.build_model(c, 3)


def _trainable_layers(model, unfreeze):
  state = nnx.state(model, optim.trainable_filter(unfreeze))
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
  assert _trainable_layers(model, "all") == everything
  # fc1/fc2 sit above block 5: they train as soon as one block does, never with 0.
  assert "backbone/fc1" in _trainable_layers(model, "1")
  assert "backbone/fc2" in _trainable_layers(model, "1")
  assert _trainable_layers(model, "0") == HEAD


@pytest.mark.parametrize("bad", ["6", "-1", "two", 2.5, True])
def test_unfreeze_blocks_rejects_bad_values(bad):
  with pytest.raises(UserError, match="unfreeze_blocks"):
    config_lib.unfreeze_blocks(bad)
  assert config_lib.unfreeze_blocks(3) == 3 and config_lib.unfreeze_blocks("ALL") == "all"


def _keras():
  import os
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  import keras
  return keras


KERAS_CASES = {
    "sgd momentum": (dict(optimizer="sgd", momentum=0.9), "SGD", dict(momentum=0.9)),
    "sgd nesterov": (dict(optimizer="sgd", momentum=0.9, nesterov=True), "SGD",
                     dict(momentum=0.9, nesterov=True)),
    "sgd plain": (dict(optimizer="sgd", momentum=0.0), "SGD", dict(momentum=0.0)),
    "sgd decay and clip": (dict(optimizer="sgd", momentum=0.9, weight_decay=0.05, grad_clip=0.5),
                           "SGD", dict(momentum=0.9, weight_decay=0.05, global_clipnorm=0.5)),
    "rmsprop": (dict(optimizer="rmsprop"), "RMSprop", dict(rho=0.9, epsilon=1e-7)),
    "adam": (dict(optimizer="adam"), "Adam", dict(epsilon=1e-7)),
    "adamw": (dict(optimizer="adamw", weight_decay=0.1), "AdamW",
              dict(weight_decay=0.1, epsilon=1e-7)),
}


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_optimizers_follow_keras_3_over_ten_steps(case):
  ours, keras_name, keras_kwargs = KERAS_CASES[case]
  rng = np.random.default_rng(0)
  params = {"a": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=(5,)).astype(np.float32),
            "tiny": rng.normal(size=(4,)).astype(np.float32)}
  # 'tiny' gets gradients ~1e-4: its second moment ~1e-8 is below epsilon (1e-7), so where
  # epsilon sits (inside the square root, after bias correction or not) changes its update
  scale = {"a": 1.0, "b": 1.0, "tiny": 1e-4}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) * (1 + 3 * (i % 2)) * scale[k]
            for k, v in params.items()} for i in range(10)]
  c = default_config().finetune
  c.learning_rate, c.weight_decay, c.grad_clip, c.nesterov = 0.01, 0.0, 0.0, False
  c.update(ours)
  tx = optim.make(c, 10)
  state, p = tx.init(params), dict(params)
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  keras = _keras()
  variables = {k: keras.Variable(v) for k, v in params.items()}
  opt = getattr(keras.optimizers, keras_name)(learning_rate=0.01, **keras_kwargs)
  for g in grads:
    opt.apply_gradients([(g[k], variables[k]) for k in params])
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), np.asarray(variables[k]), rtol=2e-5, atol=1e-7,
                               err_msg=f"{case}: {k}")
    assert not np.allclose(np.asarray(p[k]), params[k])  # it moved


def test_param_groups_scale_learning_rates_and_freeze_as_optax_alone_would():
  model = _tiny_model()
  c = default_config().finetune
  c.learning_rate, c.momentum, c.unfreeze_blocks = 0.01, 0.9, "1"
  c.param_groups = (("head/predictions/.*", {"lr_mult": 10.0}), ("backbone/block5_conv3/.*", None))
  groups = optim.ParamGroups.for_stage(c)
  trainable = nnx.state(model, groups.trainable())
  names = {optim.path_string(path) for path, _ in nnx.to_flat_state(trainable)}
  assert "head/predictions/kernel" in names and "head/fc1/kernel" in names
  assert "backbone/block5_conv2/kernel" in names and "backbone/block5_conv3/kernel" not in names
  assert not any(n.startswith("backbone/block4_") for n in names)
  tx = optim.make(c, 10, groups)
  opt_state = tx.init(trainable)
  # No optimizer state for frozen parameters: one momentum array per trainable one (besides
  # each group's integer step count).
  moments = [x for x in jax.tree.leaves(opt_state) if np.issubdtype(x.dtype, np.floating)]
  assert sum(x.size for x in moments) == sum(x.size for x in jax.tree.leaves(trainable))
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), trainable)
  params = trainable
  for _ in range(3):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  # The reference: plain optax SGD per parameter, the head's predictions at 10x the rate.
  flat_g = {optim.path_string(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
  flat_p = {optim.path_string(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(trainable)}
  got = {optim.path_string(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params)}
  for name, g in flat_g.items():
    lr = 0.1 if name.startswith("head/predictions/") else 0.01
    ref = optax.sgd(lr, momentum=0.9)
    w, st = flat_p[name], ref.init(flat_p[name])
    for _ in range(3):
      u, st = ref.update(g, st, w)
      w = optax.apply_updates(w, u)
    np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-8, err_msg=name)


def test_malformed_param_groups_are_named():
  c = default_config()
  for groups, match in (((("head/.*", {"lr": 2.0}),), r"param_groups\[0\]: .* lr_mult"),
                        ((("head/(", None),), "not a regular expression"),
                        (("head/.*",), r"param_groups\[0\]=")):
    c.finetune.param_groups = groups
    with pytest.raises(UserError, match=match):
      config_lib.validate(c)


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




def test_unknown_optimizer():
  c = default_config().finetune
  c.optimizer = "lbfgs"
  with pytest.raises(UserError, match="optimizer"):
    optim.make(c, 1)


def test_unfreeze_blocks_count_down_from_a_tapped_backbones_top():
  """model.blocks=4: unfreeze_blocks=1 trains block 4 (the tapped backbone's top), not block 5."""
  groups = optim.ParamGroups.for_stage({"unfreeze_blocks": "1"}, top=4)
  assert groups.spec("backbone/block4_conv3/kernel") is not None
  assert groups.spec("backbone/block3_conv3/kernel") is None
  assert groups.spec("head/fc1/kernel") is not None
  assert optim.ParamGroups.for_stage({"unfreeze_blocks": "1"}).spec(
      "backbone/block4_conv3/kernel") is None  # the default top, block 5
