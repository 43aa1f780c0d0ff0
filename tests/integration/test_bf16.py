"""config.dtype='bfloat16': convolutions and matmuls in bf16; parameters, optimizer state and loss
float32; a short run's validation metrics stay close to the float32 run's from the same start."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mlc_jax import metrics, models, parallel
from mlc_jax.data import pipeline, registry
from mlc_jax.train import loop, stages, state as state_lib, steps

STEPS = 6


def _config(shapes_config, dtype):
  """A VGG11 at 1/16 width with its fc1/fc2 top (the backbone's matmuls); every layer trains."""
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.dtype = dtype
  c.model.arch = "vgg11"
  c.model.include_top = True
  c.finetune.unfreeze_blocks = "all"
  c.finetune.optimizer = "adam"
  c.finetune.learning_rate = 1e-3
  return c


def _stage(config, num_classes, source=None):
  """The finetune stage of the package, every parameter trained, on a fresh model."""
  model = models.build_model(config, num_classes, rngs=nnx.Rngs(0))
  feed = lambda split, train: None if source is None else pipeline.Feed(
      source, split, batch_size=int(config.batch_size), train=train, config=config)
  return stages.finetune_stage(config, model, feed("train", True), feed("val", False), STEPS)


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it (jit, custom_vjp, scan, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


@pytest.fixture(scope="module")
def source(shapes_config):
  return registry.get(shapes_config)


def test_bf16_compute_float32_state(shapes_config, source):
  config = _config(shapes_config, "bfloat16")
  stage = _stage(config, len(source.labels))
  params = jax.tree.leaves(nnx.state(stage.model, nnx.Param))
  assert params and all(p.dtype == jnp.float32 for p in params)

  batch = next(iter(pipeline.batches(source, "train", batch_size=int(config.batch_size),
                                     train=True, config=config)))
  graphdef, trainable, stats, frozen = nnx.split(stage.model, nnx.Param, nnx.BatchStat, ...)
  spec = steps.StepSpec(graphdef=graphdef, tx=stage.tx, loss_fn=stage.loss_fn,
                        mesh=parallel.mesh(), inputs="image", stats_filter=nnx.BatchStat,
                        augment=config.augment)
  step = lambda *args: steps.train_step(spec, *args)
  args = (state_lib.create(trainable, stats, stage.tx), frozen, batch, jax.random.PRNGKey(0), 0)
  eqns = list(_equations(jax.make_jaxpr(step)(*args).jaxpr))
  # lax's convolutions, or on the CPU the oneDNN op's FFI calls (mlc_jax/ops/conv.py).
  convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"
           or str(e.params.get("target_name", "")).startswith("mlc_onednn_conv")]
  # Forward, input-gradient and weight-gradient convolutions (the op computes both gradients in
  # one call, one result each): 8 convs of VGG11, ~3x in a step.
  assert sum(len(e.outvars) for e in convs) >= 3 * 8 - 1
  for e in convs:
    assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars + e.outvars), e
  dots = [e for e in eqns if e.primitive.name == "dot_general"]
  big = [e for e in dots if min(v.aval.shape[-1] for v in e.invars) >= 64]
  # fc1/fc2 (256 units at this width) forward and backward run in bf16.
  assert len([e for e in big if all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]) >= 2

  # Output dtypes from the traced step (no second compile): float32 state and loss.
  new = jax.eval_shape(step, *args)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.trainable))
  floats = [x for x in jax.tree.leaves(new.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert new.loss_sum.dtype == jnp.float32


def _short_run(config, source):
  """STEPS finetune steps, then validation -> (train losses, val loss, val scores, val labels)."""
  stage = _stage(config, len(source.labels), source)
  mesh = parallel.mesh()
  p = loop.prepare(stage, config, mesh)
  state, key, losses = p.state, jax.random.PRNGKey(0), []
  for i, batch in enumerate(stage.train.epoch()):
    before = float(state.loss_sum)
    state = p.train_step(state, p.frozen, parallel.shard_batch(batch, mesh), key, i)
    losses.append(float(state.loss_sum) - before)
  val_loss, scores, labels = loop.run_validation(p.eval_step, state, p.frozen, stage.val, mesh)
  return np.asarray(losses), val_loss, scores, labels


def test_bf16_run_close_to_float32(shapes_config, source):
  f32 = _short_run(_config(shapes_config, "float32"), source)
  bf16 = _short_run(_config(shapes_config, "bfloat16"), source)
  assert len(f32[0]) == STEPS
  np.testing.assert_allclose(bf16[0], f32[0], rtol=0.03)  # training losses, step by step
  assert abs(bf16[1] - f32[1]) <= 0.03 * f32[1]            # validation loss
  np.testing.assert_array_equal(bf16[3], f32[3])
  assert np.max(np.abs(bf16[2] - f32[2])) < 0.05            # validation scores
  k = int(shapes_config.eval.k)
  m32, m16 = metrics.compute(f32[2], f32[3], k=k), metrics.compute(bf16[2], f32[3], k=k)
  for name in ("mAP", f"CF1_top{k}", f"OF1_top{k}"):
    assert abs(m16[name] - m32[name]) <= 0.05, (name, m16[name], m32[name])
