"""The VGG backbone, the head and the multi-label model: names, shapes, widths, dtypes, batch norm."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import default_config, forward
from mlc_jax.errors import UserError
from mlc_jax.models import (Head, MultiLabelModel, VGG, build_backbone, build_model,
                            flat_params, load_backbone_weights)
from mlc_jax.models.backbone import block_of, preprocess


def param_count(model):
  return sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_layer_names_and_sizes_match_keras(arch):
  import keras  # noqa: PLC0415
  reference = getattr(keras.applications, arch.upper())(weights=None, include_top=False,
                                                        input_shape=(32, 32, 3))
  ours = nnx.eval_shape(lambda: VGG(arch, image_size=32))
  assert list(ours.layer_names) == [l.name for l in reference.layers if l.get_weights()]
  assert param_count(ours) == reference.count_params()


def test_parameter_counts_by_hand():
  # Published totals: Keras's VGG16/VGG19 with the top, and configurations A and B without it.
  def count(arch, **kw):
    return param_count(nnx.eval_shape(lambda: VGG(arch, **kw)))
  assert count("vgg16", include_top=True) == 138_357_544
  assert count("vgg19", include_top=True) == 143_667_240
  assert [count(a, image_size=32) for a in ("vgg11", "vgg13")] == [9_220_480, 9_404_992]
  # Width 1/2: channels 32..256, every conv's kernel and bias by hand.
  chans = [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]
  ins = [3] + chans[:-1]
  assert count("vgg16", width=0.5, image_size=32) == sum(9 * i * o + o for i, o in zip(ins, chans))
  bn = nnx.eval_shape(lambda: VGG("vgg11", batch_norm=True, image_size=32))
  assert param_count(bn) == 9_220_480 + 2 * (64 + 128 + 2 * 256 + 4 * 512)
  assert [bn.block1_bn1.mean.get_value().shape, bn.block5_bn2.var.get_value().shape] == [(64,), (512,)]


@pytest.mark.parametrize("size,side", [(32, 1), (47, 1), (224, 7)])
def test_headless_shapes(size, side):
  model = VGG("vgg11", width=1 / 16, image_size=size, pooling=None)
  assert forward(model, np.zeros((2, size, size, 3), np.uint8)).shape == (2, side, side, 32)
  for pooling, dim in (("avg", 32), ("max", 32), ("flatten", side * side * 32)):
    assert VGG("vgg11", width=1 / 16, image_size=size, pooling=pooling).num_features == dim


def test_poolings_of_the_last_map():
  images = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  model = VGG("vgg11", width=1 / 16, image_size=64, pooling=None, rngs=nnx.Rngs(4))
  fmap = forward(model, images)
  assert fmap.shape == (2, 2, 2, 32)
  expected = {"avg": fmap.mean((1, 2)), "max": fmap.max((1, 2)), "flatten": fmap.reshape(2, 128)}
  for pooling, reference in expected.items():
    pooled = VGG("vgg11", width=1 / 16, image_size=64, pooling=pooling)
    nnx.update(pooled, nnx.state(model))
    np.testing.assert_allclose(forward(pooled, images), reference, rtol=1e-5, atol=1e-6)


def test_top_shapes_and_size_checks():
  images = np.zeros((1, 224, 224, 3), np.uint8)
  top = VGG("vgg13", width=1 / 16, include_top=True)
  assert forward(top, images).shape == (1, 1000)
  fc2 = VGG("vgg13", width=1 / 16, include_top=True, num_classes=0)
  assert fc2.num_features == 256 and forward(fc2, images).shape == (1, 256)
  with pytest.raises(UserError, match="224 px images; got 64x64"):
    forward(top, np.zeros((1, 64, 64, 3), np.uint8))
  with pytest.raises(UserError, match="at least 32 px"):
    VGG("vgg16", image_size=31)
  with pytest.raises(UserError, match=r"model.arch='vgg15' is not one of"):
    VGG("vgg15")
  with pytest.raises(UserError, match=r"model.pooling='sum'"):
    VGG("vgg16", pooling="sum")
  with pytest.raises(UserError, match=r"model.preprocessing='imagenet'"):
    VGG("vgg16", preprocessing="imagenet")


def test_preprocessing_conventions_by_hand():
  pixel = np.array([[[[10, 20, 30]]]], np.uint8)
  np.testing.assert_allclose(preprocess(pixel, "caffe")[0, 0, 0],
                             [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
  np.testing.assert_allclose(preprocess(pixel, "torch")[0, 0, 0],
                             [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                              (30 / 255 - 0.406) / 0.225], rtol=1e-5)
  np.testing.assert_allclose(preprocess(pixel, "unit")[0, 0, 0], [10 / 255, 20 / 255, 30 / 255])
  np.testing.assert_allclose(preprocess(pixel, "tf")[0, 0, 0],  # EfficientNet-Lite's (x - 0.5) / 0.5
                             [(10 / 255 - 0.5) / 0.5, (20 / 255 - 0.5) / 0.5, (30 / 255 - 0.5) / 0.5],
                             rtol=1e-5)


def test_bfloat16_computes_close_to_float32_with_float32_params():
  images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
  f32 = VGG("vgg16", width=1 / 8, image_size=64, pooling="avg", rngs=nnx.Rngs(3))
  bf16 = VGG("vgg16", width=1 / 8, image_size=64, pooling="avg", dtype=jnp.bfloat16)
  nnx.update(bf16, nnx.state(f32))
  assert {v.dtype for v in flat_params(bf16).values()} == {np.dtype(np.float32)}
  # jaxlib 0.12.0.1's CPU YNNPACK fusion miscompiles bfloat16 conv+pool chains (inf/garbage out);
  # turning that fusion off for this compile keeps the test about the model (GPUs are unaffected).
  graphdef, state = nnx.split(bf16)
  apply = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x),
                  compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})
  a, b = forward(f32, images), np.asarray(apply(state, images))
  assert b.dtype == np.float32
  err = np.abs(a - b).max() / np.abs(a).max()
  assert 0 < err < 3e-2  # bfloat16 really ran (not zero), and stayed close


def test_batch_norm_uses_batch_statistics_in_training_and_updates_running_ones():
  model = VGG("vgg11", width=1 / 16, image_size=32, batch_norm=True, preprocessing="unit")
  images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  conv1 = np.asarray(model.block1_conv1(jnp.asarray(images, jnp.float32) / 255.0))
  nnx.jit(lambda m, x: m(x, train=True))(model, images)
  np.testing.assert_allclose(model.block1_bn1.mean[...], 0.1 * conv1.mean((0, 1, 2)), rtol=1e-4,
                             atol=1e-6)  # torch momentum 0.1 from mean 0
  np.testing.assert_allclose(model.block1_bn1.var[...], 0.9 + 0.1 * conv1.var((0, 1, 2)), rtol=1e-4)
  frozen = {k: v.copy() for k, v in flat_params(model).items()}
  forward(model, images)
  assert all(np.array_equal(v, flat_params(model)[k]) for k, v in frozen.items())


def test_block_of():
  assert block_of("backbone/block3_conv2/kernel") == 3
  assert block_of(("backbone", "block5_bn1", "mean")) == 5
  assert [block_of(f"backbone/{n}/kernel") for n in ("fc1", "fc2")] == [6, 6]
  assert block_of("head/fc1/kernel") is None


def test_head_dropout_is_keyed_and_off_at_inference():
  head = Head(16, 5, hidden=32, dropout=0.5, rngs=nnx.Rngs(0))
  x = np.random.default_rng(2).normal(size=(4, 16)).astype(np.float32)
  k = head.fc1.kernel[...]
  expected = np.maximum(x @ k + head.fc1.bias[...], 0) @ head.predictions.kernel[...] + head.predictions.bias[...]
  np.testing.assert_allclose(head(x), expected, rtol=1e-5, atol=1e-5)
  a = head(x, train=True, rngs=nnx.Rngs(dropout=jax.random.key(7)))
  b = head(x, train=True, rngs=nnx.Rngs(dropout=jax.random.key(7)))
  c = head(x, train=True, rngs=nnx.Rngs(dropout=jax.random.key(8)))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  linear = Head(16, 5, hidden=0)
  assert not hasattr(linear, "fc1") and linear(x).shape == (4, 5)


def test_head_of_two_hidden_layers_matches_numpy():
  head = Head(16, 5, hidden=(12, 7), dropout=0.5, rngs=nnx.Rngs(1))
  x = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
  h = x
  for layer in (head.fc1, head.fc2):
    h = np.maximum(h @ layer.kernel[...] + layer.bias[...], 0)
  expected = h @ head.predictions.kernel[...] + head.predictions.bias[...]
  np.testing.assert_allclose(head(x), expected, rtol=1e-5, atol=1e-5)
  assert head.fc2.kernel[...].shape == (12, 7) and not hasattr(head, "fc3")
  assert head.sizes == (12, 7) == Head(16, 5, hidden=[12, 7]).sizes
  assert Head(16, 5, hidden=32).sizes == (32,) and Head(16, 5, hidden=()).sizes == ()
  train = head(x, train=True, rngs=nnx.Rngs(dropout=jax.random.key(7)))
  assert not np.allclose(train, expected)  # dropout after each hidden layer when training


def small_config(**model):
  config = default_config()
  config.image_size, config.model.weights, config.model.width = 32, "", 1 / 16
  config.head.hidden = (8,)
  for key, value in model.items():
    config.model[key] = value
  return config


def test_build_model_and_flat_params():
  model = build_model(small_config(), 3)
  assert isinstance(model, MultiLabelModel) and model.backbone.preprocessing == "unit"
  images = np.zeros((2, 32, 32, 3), np.uint8)
  assert forward(model, images).shape == (2, 3)
  params = flat_params(model)
  assert params["backbone/block1_conv1/kernel"].shape == (3, 3, 3, 4)
  assert params["head/fc1/kernel"].shape == (32, 8) and "head/predictions/bias" in params
  assert build_backbone(small_config(weights="x.safetensors")).preprocessing == "torch"
  assert build_backbone(small_config(weights="imagenet", preprocessing="unit")).preprocessing == "unit"
  load_backbone_weights(model.backbone, small_config())  # '' leaves the initialisation
  from mlc_jax import config as config_lib
  with pytest.raises(UserError, match="model.include_top=True: .* 224 px"):
    config_lib.validate(small_config(weights="imagenet", include_top=True))
  with pytest.raises(UserError, match="no batch-norm variant"):
    config_lib.validate(small_config(weights="imagenet", batch_norm=True))


def test_functional_train_step_with_split_merge():
  model = build_model(small_config(batch_norm=True), 3)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(0.1)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state, images, labels, key):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      logits = m(images, train=True, rngs=nnx.Rngs(dropout=key))
      return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), nnx.state(m, nnx.BatchStat)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
  new_params, stats, _, loss = step(params, rest, opt_state, images, labels, jax.random.key(0))
  assert np.isfinite(loss)
  before, after = nnx.to_flat_state(params), dict(nnx.to_flat_state(new_params))
  assert any(not np.array_equal(v.get_value(), after[p].get_value()) for p, v in before)
  assert not np.array_equal(stats["backbone"]["block1_bn1"]["mean"].get_value(), 0)


def test_max_pool_equals_reduce_window_with_ties_and_odd_sizes():
  # The reference: lax.reduce_window's max pool and its gradient (XLA's select-and-scatter, the
  # first maximum of each window), on integer-valued maps full of ties, even and odd sizes.
  from mlc_jax.models.vgg import max_pool_2x2

  def ref(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  rng = np.random.default_rng(0)
  for shape in [(2, 8, 8, 3), (2, 7, 9, 5)]:
    for dtype in (jnp.float32, jnp.bfloat16):
      x = jnp.asarray(rng.integers(-2, 3, shape), dtype)
      ours, ours_vjp = jax.vjp(max_pool_2x2, x)
      want, want_vjp = jax.vjp(ref, x)
      r = jnp.asarray(rng.standard_normal(want.shape), dtype)
      assert ours.shape == want.shape and np.array_equal(ours, want)
      assert np.array_equal(ours_vjp(r)[0], want_vjp(r)[0]), (shape, dtype)
