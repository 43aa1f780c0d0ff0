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
  # the shorthand's groups alone (they freeze fc1/fc2 of a model with the top when they should)
  state = nnx.state(model, optim.ParamGroups(optim.unfreeze_groups(unfreeze)).trainable())
  return sorted({"/".join(map(str, path[:2])) for path, _ in nnx.to_flat_state(state)})


HEAD = ["head/fc1", "head/predictions"]
BLOCK = {1: ["block1_conv1", "block1_conv2"], 2: ["block2_conv1", "block2_conv2"],
         3: ["block3_conv1", "block3_conv2", "block3_conv3"],
         4: ["block4_conv1", "block4_conv2", "block4_conv3"],
         5: ["block5_conv1", "block5_conv2", "block5_conv3"]}


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_unfreeze_blocks_picks_the_top_blocks(n):
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
  """finetune.optimizer, finetune.momentum (0.9 and 0), finetune.nesterov, finetune.weight_decay
  and finetune.grad_clip set by KERAS_CASES: ten updates equal Keras 3's optimizer's."""
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
  """finetune.schedule cosine and step, finetune.warmup_epochs 1: the rate by hand per step."""
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
  # warmup then decay: the decay runs over the 30 steps after the 10 of warmup, counted from its end
  c.schedule = "cosine"
  lr = optim.schedule(c, 10)
  for t in (0, 7, 15, 30):
    assert float(lr(10 + t)) == pytest.approx(0.5 * (1 + np.cos(np.pi * t / 30)), abs=1e-6)
  c.schedule = "step"  # x0.1 at 30 // 2 = 15 and 3 * 30 // 4 = 22 steps after warmup
  lr = optim.schedule(c, 10)
  assert [float(lr(s)) for s in (5, 24, 25, 31, 32)] == pytest.approx([0.5, 1, 0.1, 0.1, 0.01])
  config = default_config()
  config.finetune.schedule = "linear"
  with pytest.raises(UserError, match="schedule"):  # the config's check, before any optimizer
    config_lib.validate(config)




def test_unknown_optimizer():
  c = default_config()
  c.finetune.optimizer = "lbfgs"
  with pytest.raises(UserError, match="optimizer"):  # the config's check, before any optimizer
    config_lib.validate(c)


def test_weight_decay_is_scaled_by_each_groups_wd_mult_and_lr_mult():
  """finetune.weight_decay with two param_groups whose lr_mult and wd_mult differ: one update
  from a zero gradient is the decay alone, -lr * lr_mult * wd * wd_mult * p (by hand)."""
  c = default_config().finetune
  c.learning_rate, c.momentum, c.weight_decay = 0.01, 0.9, 0.1
  c.param_groups = (("head/.*", {"lr_mult": 10.0, "wd_mult": 0.5}),
                    ("backbone/.*", {"lr_mult": 2.0, "wd_mult": 3.0}))
  groups = optim.ParamGroups(c.param_groups)
  params = {"head": {"w": np.full(3, 1.0, np.float32)},
            "backbone": {"w": np.full(3, 2.0, np.float32)},
            "other": {"w": np.full(3, 4.0, np.float32)}}  # no group: the stage's defaults
  tx = optim.make(c, 10, groups)
  zero = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  expected = {"head": -0.01 * 10 * 0.1 * 0.5 * 1.0, "backbone": -0.01 * 2 * 0.1 * 3.0 * 2.0,
              "other": -0.01 * 0.1 * 4.0}
  for name, value in expected.items():
    np.testing.assert_allclose(np.asarray(updates[name]["w"]), value, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("schedule, warmup", [("cosine", 0), ("cosine", 1), ("constant", 1),
                                              ("step", 0)])
def test_accumulated_updates_follow_the_schedule_in_optimizer_updates(schedule, warmup):
  """finetune.accumulate_steps = 3 with finetune.schedule and finetune.warmup_epochs: the rate
  the optimizer applies at its u-th update (plain SGD on a unit gradient) equals the hand-computed
  schedule over epochs * (steps_per_epoch // 3) updates, and the stage's logged schedule."""
  from mlc_jax.train import stages
  config = default_config()
  f = config.finetune
  f.optimizer, f.momentum, f.learning_rate, f.epochs = "sgd", 0.0, 1.0, 2
  f.schedule, f.warmup_epochs, f.accumulate_steps = schedule, warmup, 3
  spe, k = 12, 3  # 12 micro-batches an epoch -> 4 updates an epoch, 8 in all
  total, warm = 2 * spe // k, warmup * spe // k

  def hand(u):
    if u < warm:
      return u / warm
    t = u - warm
    if schedule == "cosine":
      return 0.5 * (1 + np.cos(np.pi * min(t, total - warm) / (total - warm)))
    if schedule == "step":
      return 1.0 * (0.1 if t >= (total - warm) // 2 else 1) * (
          0.1 if t >= 3 * (total - warm) // 4 else 1)
    return 1.0

  stage = stages.finetune_stage(config, _tiny_model(), steps_per_epoch=spe)
  params = {"w": np.zeros(1, np.float32)}
  state, applied = stage.tx.init(params), []
  for i in range(2 * spe):
    updates, state = stage.tx.update({"w": np.ones(1, np.float32)}, state, params)
    if (i + 1) % k == 0:  # the k-th micro-batch applies the update; the others apply nothing
      applied.append(-float(np.asarray(updates["w"])[0]))
    else:
      assert not np.any(np.asarray(updates["w"]))
  assert len(applied) == total
  np.testing.assert_allclose(applied, [hand(u) for u in range(total)], atol=1e-6)
  # The loop logs stage.schedule(step // accumulate_steps) after `step` micro-batches: the rate
  # of the update that comes next.
  np.testing.assert_allclose([float(stage.schedule(s // k)) for s in range(0, 2 * spe, k)],
                             [hand(u) for u in range(total)], atol=1e-6)


def test_param_groups_first_match_wins_and_come_before_unfreeze_blocks():
  """finetune.param_groups: a path takes the first group whose regex matches it whole (order
  decides between overlapping groups); the groups come before unfreeze_blocks' expansion, so a
  group can train a block that unfreeze_blocks = 1 would freeze; unmatched paths train at 1x."""
  c = default_config().finetune
  c.unfreeze_blocks = "1"
  c.param_groups = (("backbone/block5_conv1", None), ("head/predictions/.*", None),
                    ("head/.*", {"lr_mult": 10.0}), ("backbone/block1_conv1/.*", {"wd_mult": 0.0}))
  groups = optim.ParamGroups.for_stage(c)
  assert groups.spec("head/predictions/kernel") is None
  assert groups.spec("head/fc1/kernel") == {"lr_mult": 10.0}
  assert groups.spec("backbone/block1_conv1/kernel") == {"wd_mult": 0.0}  # before the freeze
  assert groups.spec("backbone/block1_conv2/kernel") is None  # unfreeze_blocks' group
  # no group matches the whole path (block5_conv1 is only its start): the stage's defaults
  assert groups.spec("backbone/block5_conv1/kernel") == {}
  assert groups.spec("xhead/fc1/kernel") == {}
  c.param_groups = (("head/.*", {"lr_mult": 10.0}), ("head/predictions/.*", None))
  assert optim.ParamGroups.for_stage(c).spec("head/predictions/kernel") == {"lr_mult": 10.0}


def test_unfreeze_blocks_count_down_from_a_tapped_backbones_top():
  """model.blocks=4: unfreeze_blocks=1 trains block 4 (the tapped backbone's top), not block 5."""
  groups = optim.ParamGroups.for_stage({"unfreeze_blocks": "1"}, top=4)
  assert groups.spec("backbone/block4_conv3/kernel") is not None
  assert groups.spec("backbone/block3_conv3/kernel") is None
  assert groups.spec("head/fc1/kernel") is not None
  assert optim.ParamGroups.for_stage({"unfreeze_blocks": "1"}).spec(
      "backbone/block4_conv3/kernel") is None  # the default top, block 5
