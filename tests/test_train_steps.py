"""The jitted finetune step: frozen blocks stay bit-identical and cost no backward pass."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import default_config
from mlc_jax import losses, models, optim, sharding, steps


def _model():
  c = default_config()
  c.image_size, c.model.width, c.model.weights, c.head.hidden = 32, 1 / 16, "", 16
  return models.build_model(c, 4)


def _batch(n=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "labels": (rng.random((n, 4)) < 0.5).astype(np.float32),
          "mask": np.ones(n, bool)}


def _compiled_step(model, unfreeze, grad_clip=0.0):
  mesh = sharding.mesh()
  graphdef, trainable, stats, frozen = nnx.split(
      model, optim.trainable_filter(unfreeze), nnx.BatchStat, ...)
  c = default_config().finetune
  c.grad_clip = grad_clip
  tx = optim.make(c, 1)
  fn = steps.make_finetune_step(mesh, graphdef, tx, losses.bce, None)
  args = (trainable, stats, frozen, tx.init(trainable), steps.zero_sums(), _batch(),
          jax.random.PRNGKey(0), 0)
  return fn, args


def test_frozen_parameters_are_bit_identical_and_trainable_ones_move():
  model = _model()
  before = models.flat_params(model)
  fn, (trainable, stats, frozen, opt_state, sums, _, key, _) = _compiled_step(model, "1")
  mesh = sharding.mesh()
  trainable, stats, frozen, opt_state, sums = sharding.replicate(
      (trainable, stats, frozen, opt_state, sums), mesh)
  for step in range(3):
    trainable, stats, opt_state, sums = fn(trainable, stats, frozen, opt_state, sums,
                                           _batch(seed=step), key, step)
  nnx.update(model, trainable)
  after = models.flat_params(model)
  moved = {k for k in before if not np.array_equal(before[k], after[k])}
  expected = {k for k in before if k.startswith(("head/", "backbone/block5_"))}
  assert moved == expected
  assert float(sums["steps"]) == 3 and np.isfinite(float(sums["loss_sum"]))


def _flops(fn, args):
  analysis = fn.lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def test_frozen_blocks_cost_no_backward_pass():
  model = _model()
  flops = {u: _flops(*_compiled_step(model, u)) for u in ("0", "1", "all")}
  # The forward is ~1/3 of a full step; block 5 at 2x2 px is a sliver of the backward.
  assert flops["1"] < 0.45 * flops["all"]
  assert flops["0"] <= flops["1"]
  # Clipping the global norm of the trainable gradient must not bring the frozen backward back.
  assert _flops(*_compiled_step(model, "1", grad_clip=1.0)) < 0.45 * flops["all"]
