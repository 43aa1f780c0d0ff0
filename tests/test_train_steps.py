"""The jitted finetune step: frozen blocks stay bit-identical and cost no backward pass."""
import jax
import pytest
import numpy as np
from flax import nnx

from conftest import default_config
from mlc_jax import models, parallel
from mlc_jax.train import loop, stages


def _model():
  c = default_config()
  c.image_size, c.model.width, c.model.weights, c.head.hidden = 32, 1 / 16, "", (16,)
  return models.build_model(c, 4)


def _batch(n=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "labels": (rng.random((n, 4)) < 0.5).astype(np.float32),
          "mask": np.ones(n, bool)}


def prepared(model, unfreeze, grad_clip=0.0):
  """The finetune stage's TrainState and jitted steps for `model` (no augmentation)."""
  c = default_config()
  c.finetune.grad_clip, c.finetune.unfreeze_blocks = grad_clip, unfreeze
  c.augment.flip, c.augment.zoom, c.augment.rotation = False, 0.0, 0.0
  return loop.prepare(stages.finetune_stage(c, model), c, parallel.mesh())


def test_frozen_parameters_are_bit_identical_and_trainable_ones_move():
  model = _model()
  before = models.flat_params(model)
  p = prepared(model, "1")
  state, key = p.state, jax.random.PRNGKey(0)
  for step in range(3):
    state = p.train_step(state, p.frozen, _batch(seed=step), key, step)
  nnx.update(model, state.trainable)
  after = models.flat_params(model)
  moved = {k for k in before if not np.array_equal(before[k], after[k])}
  expected = {k for k in before if k.startswith(("head/", "backbone/block5_"))}
  assert moved == expected
  assert int(state.loss_steps) == 3 and np.isfinite(float(state.loss_sum))


def _flops(p):
  lowered = p.train_step.lower(p.state, p.frozen, _batch(), jax.random.PRNGKey(0), 0)
  analysis = lowered.compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def test_frozen_blocks_cost_no_backward_pass():
  model = _model()
  flops = {u: _flops(prepared(model, u)) for u in ("0", "1", "all")}
  # The forward is ~1/3 of a full step; block 5 at 2x2 px is a sliver of the backward.
  assert flops["1"] < 0.45 * flops["all"]
  assert flops["0"] <= flops["1"]
  # Clipping the global norm of the trainable gradient must not bring the frozen backward back.
  assert _flops(prepared(model, "1", grad_clip=1.0)) < 0.45 * flops["all"]


def _bn_model(dtype):
  c = default_config()
  c.image_size, c.model.width, c.model.weights, c.head.hidden = 32, 1 / 16, "", (16,)
  c.model.arch, c.model.batch_norm, c.dtype = "vgg11", True, dtype
  return models.build_model(c, 4)


def test_float32_steps_fuse_reductions_as_xla_computes_them_and_bfloat16_ones_do_not():
  # parallel.jit_options: a float32 model's steps compile with XLA:CPU's YNNPACK reduction fusion
  # (batch norm's statistics and gradients, the pools); the reference is the same step compiled
  # without it (XLA's own reductions): equal up to float reordering. bfloat16 models never get it.
  import dataclasses

  import jax.numpy as jnp

  from mlc_jax.train import steps
  model = _bn_model("float32")
  graphdef, weights = nnx.split(model)
  images = _batch()["image"]
  forward = models.forward(graphdef, "sigmoid", None, parallel.jit_options(model)).lower(
      weights, images).compile()  # evaluation's
  assert "ynn_fusion" in forward.as_text()
  np.testing.assert_allclose(forward(weights, images), models.forward(graphdef)(weights, images),
                             rtol=1e-5, atol=1e-6)
  p = prepared(model, "all")
  assert p.spec.compiler_options == parallel.FLOAT32_CPU_OPTIONS
  batch, key = parallel.shard_batch(_batch(), parallel.mesh()), jax.random.PRNGKey(0)
  args = (p.frozen, batch, key, 0)
  step = p.train_step.lower(p.state, *args).compile()
  assert "ynn_fusion" in step.as_text()
  plain = steps.make_train_step(dataclasses.replace(p.spec, compiler_options=()), p.shardings,
                                parallel.state_shardings(p.frozen, parallel.mesh()))
  plain = plain.lower(p.state, *args).compile()
  assert "ynn_fusion" not in plain.as_text()
  before = jax.tree.leaves((p.state.trainable, p.state.stats))
  ours = step(jax.tree.map(jnp.copy, p.state), *args)
  ref = plain(jax.tree.map(jnp.copy, p.state), *args)
  # The step's change (updates and statistics) against the reference's, over all arrays (the conv
  # biases before batch norm have a zero gradient: their change is rounding alone).
  pairs = list(zip(jax.tree.leaves((ours.trainable, ours.stats)),
                   jax.tree.leaves((ref.trainable, ref.stats)), before))
  error = np.sqrt(sum(np.sum(np.square(a - b)) for a, b, _ in pairs))
  change = np.sqrt(sum(np.sum(np.square(b - x)) for _, b, x in pairs))
  assert 0 < error < 1e-5 * change, (error, change)
  assert float(ours.loss_sum) == pytest.approx(float(ref.loss_sum), rel=1e-5)
  bf16 = prepared(_bn_model("bfloat16"), "all")
  assert bf16.spec.compiler_options == ()
  assert "ynn_fusion" not in bf16.train_step.lower(bf16.state, *args).compile().as_text()
