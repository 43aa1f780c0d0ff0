"""mlc_jax/ops/conv.py: the oneDNN convolutions equal lax.conv_general_dilated (the reference,
XLA's own convolution), values and both gradients, on every VGG16 layer shape and the other shapes
the op takes (1x1, stride 2, SAME/VALID, odd sizes), float32 and bfloat16, under jit, vmap and data
sharding over 4 fake devices; the bias and ReLU fused into it equal lax.conv + b (+ jax.nn.relu),
each gradient alone; conv.Conv equals nnx.Conv; the models route their convolutions through it on
the CPU; switched off or missing, lax.conv runs and a warning says why once.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import subprocess_env
from mlc_jax.models import VGG
from mlc_jax.models.vgg import BLOCK_CHANNELS, BLOCKS
from mlc_jax.ops import conv

ROOT = pathlib.Path(__file__).resolve().parents[1]
DN = ("NHWC", "HWIO", "NHWC")


def _vgg16_layers():
  """(in, out) channels of VGG16's 13 convolutions, each distinct pair once."""
  pairs, cin = [], 3
  for n, c in zip(BLOCKS["vgg16"], BLOCK_CHANNELS):
    for _ in range(n):
      pairs.append((cin, c))
      cin = c
  return sorted(set(pairs))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _values_and_grads(fn, x, w, strides, padding):
  """y = fn(x, w) and the gradients of sum(y * r) (a fixed random cotangent r) w.r.t. x and w."""
  def f(x, w):
    return fn(x, w, strides, padding, dimension_numbers=DN)
  y, vjp = jax.vjp(f, x, w)
  r = jax.random.normal(jax.random.PRNGKey(1), y.shape, jnp.float32).astype(y.dtype)
  dx, dw = vjp(r)
  return y, dx, dw


def _operands(n, h, wd, c, o, k, dtype=jnp.float32, seed=0):
  kx, kw = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.normal(kx, (n, h, wd, c), jnp.float32)
  w = jax.random.normal(kw, (k, k, c, o), jnp.float32) / np.sqrt(k * k * c)
  return x.astype(dtype), w.astype(dtype)


def _assert_close(ours, ref, tol, what):
  for name, a, b in zip(("value", "input grad", "weight grad"), ours, ref):
    assert a.shape == b.shape and a.dtype == b.dtype, (what, name, a.shape, b.shape)
    err = _rel(a, b)
    assert err <= tol, f"{what}: {name} differs from lax.conv by {err:.2e} (relative)"


@pytest.fixture(autouse=True, scope="module")
def onednn_on():
  """The op on for this file's tests whatever the environment says, as it was before them after."""
  before = os.environ.get("MLC_JAX_ONEDNN")
  os.environ["MLC_JAX_ONEDNN"] = "1"
  conv._LIB.update(tried=False, lib=None, why=None)
  yield
  if before is None:
    os.environ.pop("MLC_JAX_ONEDNN")
  else:
    os.environ["MLC_JAX_ONEDNN"] = before
  conv._LIB.update(tried=False, lib=None, why=None)
  jax.clear_caches()  # no trace that called the op is reused by a later test


def test_on_by_default_and_silent_about_it(monkeypatch, caplog):
  monkeypatch.delenv("MLC_JAX_ONEDNN")
  monkeypatch.setattr(conv, "_LIB", {"tried": False, "lib": None, "why": None})
  with caplog.at_level("INFO"):
    assert conv.library() is not None and conv.available()
  assert not [r for r in caplog.records if r.name == conv.log.name] and conv.why_not() is None


def test_library_is_built_and_used():
  assert conv.library() is not None, conv.why_not()
  assert conv.available()
  assert conv.library().mlc_conv_onednn_version() >= 30000


@pytest.mark.parametrize("cin,cout", _vgg16_layers())
def test_vgg16_layers_equal_lax_float32(cin, cout):
  # 3x3, stride 1, SAME: every layer of VGG16 (distinct channel pairs), on a small 7x6 map.
  x, w = _operands(2, 7, 6, cin, cout, 3)
  ours = _values_and_grads(conv.conv_general_dilated, x, w, (1, 1), "SAME")
  ref = _values_and_grads(lax.conv_general_dilated, x, w, (1, 1), "SAME")
  _assert_close(ours, ref, 1e-5, f"{cin}->{cout}")


SHAPES = [  # (n, h, w, c, o, k, strides, padding)
    (2, 8, 8, 16, 32, 1, (1, 1), "SAME"),
    (2, 9, 7, 16, 32, 1, (2, 2), "VALID"),
    (2, 8, 8, 16, 24, 3, (2, 2), "SAME"),   # even size, stride 2: lax pads (0, 1)
    (2, 9, 9, 16, 24, 3, (2, 2), "SAME"),   # odd size: (1, 1)
    (1, 10, 7, 8, 16, 3, (2, 1), "SAME"),   # different strides per axis
    (2, 9, 8, 16, 16, 3, (1, 1), "VALID"),
    (3, 11, 11, 8, 16, 3, (2, 2), "VALID"),
    (2, 6, 6, 8, 16, 3, (1, 1), ((2, 0), (0, 1))),  # explicit, asymmetric
]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[5]}x{s[5]}-s{s[6][0]}{s[6][1]}-{s[7]}"
                                                if isinstance(s[7], str) else "explicit"
                                                for s in SHAPES])
def test_strides_paddings_and_1x1_equal_lax(shape):
  n, h, wd, c, o, k, strides, padding = shape
  x, w = _operands(n, h, wd, c, o, k)
  ours = _values_and_grads(conv.conv_general_dilated, x, w, strides, padding)
  ref = _values_and_grads(lax.conv_general_dilated, x, w, strides, padding)
  _assert_close(ours, ref, 1e-5, str(shape))


@pytest.mark.parametrize("shape", [(2, 8, 8, 64, 64, 3, (1, 1), "SAME"),
                                   (2, 9, 9, 32, 64, 3, (2, 2), "SAME"),
                                   (2, 8, 8, 32, 64, 1, (1, 1), "VALID")])
def test_bfloat16_within_its_precision(shape):
  # The reference: lax in float32 on the same bf16-rounded operands and cotangent; bf16 keeps 8
  # bits of mantissa (relative rounding 2^-8 = 0.4%), oneDNN accumulates in float32.
  n, h, wd, c, o, k, strides, padding = shape
  x, w = _operands(n, h, wd, c, o, k, jnp.bfloat16)
  ours = _values_and_grads(conv.conv_general_dilated, x, w, strides, padding)
  ref = _values_and_grads(lax.conv_general_dilated, x.astype(jnp.float32), w.astype(jnp.float32),
                          strides, padding)
  assert all(a.dtype == jnp.bfloat16 for a in ours)
  _assert_close([a.astype(jnp.float32) for a in ours], ref, 1e-2, f"bf16 {shape}")


def test_jit_and_vmap_over_the_batch():
  x, w = _operands(3, 8, 8, 16, 32, 3)

  def loss(fn, x, w):
    return jnp.sum(jnp.tanh(fn(x, w, (2, 2), "SAME", dimension_numbers=DN)))

  ours = jax.jit(jax.value_and_grad(lambda x, w: loss(conv.conv_general_dilated, x, w),
                                    argnums=(0, 1)))(x, w)
  ref = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), argnums=(0, 1))(x, w)
  assert _rel(ours[0], ref[0]) <= 1e-5
  _assert_close(ours[1], ref[1], 1e-5, "jit")  # (dx, dw)

  # vmap over the batch: per-example weight gradients, one image at a time through the op.
  def one(fn, xi, w):
    return jax.grad(lambda w: loss(fn, xi[None], w))(w)
  per_ours = jax.jit(jax.vmap(lambda xi: one(conv.conv_general_dilated, xi, w)))(x)
  per_ref = jax.vmap(lambda xi: one(lax.conv_general_dilated, xi, w))(x)
  assert per_ours.shape == (3, 3, 3, 16, 32)
  assert _rel(per_ours, per_ref) <= 1e-5
  y_ours = jax.vmap(lambda xi: conv.conv_general_dilated(xi[None], w, (1, 1), "SAME",
                                                         dimension_numbers=DN)[0])(x)
  assert _rel(y_ours, lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)) <= 1e-5


def test_each_gradient_alone_equals_lax_and_only_it_is_computed():
  # A frozen kernel (w not differentiated) needs only the input gradient; the lowest trained layer
  # (its input not differentiated) only the weight gradient; both together run in one call.
  x, w = _operands(2, 9, 8, 16, 24, 3, seed=5)

  def loss(fn, x, w):
    return jnp.sum(jnp.sin(fn(x, w, (2, 2), "SAME", dimension_numbers=DN)))

  targets = {0: "mlc_onednn_conv_data", 1: "mlc_onednn_conv_weights",
             (0, 1): "mlc_onednn_conv_backward"}
  for argnums, target in targets.items():
    grad = jax.jit(jax.grad(lambda x, w: loss(conv.conv_general_dilated, x, w), argnums))
    ours = grad(x, w)
    ref = jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), argnums)(x, w)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
      assert a.shape == b.shape and _rel(a, b) <= 1e-5, (argnums, _rel(a, b))
    text = grad.lower(x, w).as_text()
    calls = {t: text.count(f"@{t}(") for t in targets.values()}
    assert calls == {t: int(t == target) for t in targets.values()}, (argnums, calls)


BIAS_CASES = [  # (n, h, w, c, o, k, strides, padding): a VGG layer, ResNet's stride-2, a 1x1
    (2, 7, 6, 64, 128, 3, (1, 1), "SAME"),
    (2, 9, 9, 16, 32, 3, (2, 2), ((1, 1), (1, 1))),
    (3, 8, 8, 32, 16, 1, (1, 1), "VALID"),
]


def _bias_reference(x, w, b, strides, padding, relu):
  y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN) + b
  return jax.nn.relu(y) if relu else y


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", BIAS_CASES, ids=["vgg", "stride2", "1x1"])
def test_bias_and_relu_fused_equal_lax_and_each_gradient_alone(shape, relu):
  # lax.conv + b (+ jax.nn.relu) is the reference; the sine loss gives the ReLU's mask a cotangent
  # of both signs. Each subset of (x, w, b) is differentiated through the one call it needs.
  n, h, wd, c, o, k, strides, padding = shape
  x, w = _operands(n, h, wd, c, o, k, seed=7)
  b = jax.random.normal(jax.random.PRNGKey(8), (o,), jnp.float32)
  pads = conv._pads(x.shape, w.shape, strides, padding)

  def loss(fn, x, w, b):
    return jnp.sum(jnp.sin(3 * fn(x, w, b)))

  def ours(x, w, b):
    return conv.onednn_conv_bias(x, w, b, strides, pads, relu)

  def ref(x, w, b):
    return _bias_reference(x, w, b, strides, padding, relu)

  y = jax.jit(ours)(x, w, b)
  assert y.shape == ref(x, w, b).shape and _rel(y, ref(x, w, b)) <= 1e-5
  if relu:
    assert 0.2 < float(jnp.mean(y == 0)) < 0.8  # the mask matters
  targets = {(0,): "data", (1, 2): "weights_bias", (2,): "weights_bias",
             (0, 1, 2): "backward_bias"}
  for argnums, target in targets.items():
    grad = jax.jit(jax.grad(lambda x, w, b: loss(ours, x, w, b), argnums))
    got = grad(x, w, b)
    want = jax.grad(lambda x, w, b: loss(ref, x, w, b), argnums)(x, w, b)
    for i, a, e in zip(argnums, got, want):
      assert a.shape == e.shape and _rel(a, e) <= 1e-5, (argnums, i, _rel(a, e))
    text = grad.lower(x, w, b).as_text()
    called = {t for t in conv.TARGETS if f"@mlc_onednn_conv_{t}(" in text}
    assert called == {"bias_forward", target}, (argnums, called)


@pytest.mark.parametrize("shape", BIAS_CASES, ids=["vgg", "stride2", "1x1"])
def test_bias_and_relu_fused_in_bfloat16_within_its_precision(shape):
  # As test_bfloat16_within_its_precision: the reference is lax in float32 (+ b, ReLU) on the
  # same bf16-rounded operands and cotangent; oneDNN accumulates in float32, rounds to bf16.
  n, h, wd, c, o, k, strides, padding = shape
  x, w = _operands(n, h, wd, c, o, k, jnp.bfloat16, seed=9)
  b = jax.random.normal(jax.random.PRNGKey(10), (o,), jnp.float32).astype(jnp.bfloat16)
  pads = conv._pads(x.shape, w.shape, strides, padding)
  y, vjp = jax.vjp(lambda x, w, b: conv.onednn_conv_bias(x, w, b, strides, pads, True), x, w, b)
  r = jax.random.normal(jax.random.PRNGKey(11), y.shape, jnp.float32).astype(jnp.bfloat16)
  f32 = [a.astype(jnp.float32) for a in (x, w, b, r)]
  want, want_vjp = jax.vjp(lambda x, w, b: _bias_reference(x, w, b, strides, padding, True),
                           *f32[:3])
  got = (y, *vjp(r))
  assert all(a.dtype == jnp.bfloat16 for a in got)
  assert 0.2 < float(jnp.mean(y == 0)) < 0.8  # the ReLU's mask matters
  for name, a, e in zip(("value", "dx", "dw", "db"), got, (want, *want_vjp(f32[3]))):
    assert a.shape == e.shape and _rel(a.astype(jnp.float32), e) <= 1e-2, (name, _rel(a, e))


def test_conv_module_equals_nnx_conv_and_fuses_only_what_it_can():
  # conv.Conv is nnx.Conv (same parameters) with the bias and ReLU fused where the op takes them:
  # float32 or bfloat16 with a bias; without a bias or under lax_only it is nnx.Conv's own call.
  from flax import nnx
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 9, 9, 16), jnp.float32)
  cases = [({}, "bias_forward"), ({"use_bias": False}, "forward"),
           ({"dtype": jnp.bfloat16}, "bias_forward"),
           ({"strides": 2, "padding": ((1, 0), (0, 1))}, "bias_forward")]
  for kwargs, target in cases:
    ours = conv.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0), **{"padding": "SAME", **kwargs})
    plain = nnx.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0), **{"padding": "SAME", **kwargs})
    if ours.bias is not None:
      ours.bias.value = plain.bias.value = jax.random.normal(jax.random.PRNGKey(3), (32,))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, nnx.state(ours), nnx.state(plain)))
    tol = 1e-2 if "dtype" in kwargs else 1e-5
    for relu in (False, True):
      want = jax.nn.relu(plain(x)) if relu else plain(x)
      got = jax.jit(lambda x: ours(x, relu=relu))(x)
      assert got.dtype == want.dtype and _rel(got.astype(jnp.float32), want.astype(jnp.float32)) <= tol
      text = jax.jit(lambda x: ours(x, relu=relu)).lower(x).as_text()
      assert {t for t in conv.TARGETS if f"@mlc_onednn_conv_{t}(" in text} == {target}, kwargs
      with conv.lax_only():
        assert "mlc_onednn_conv" not in jax.jit(lambda x: ours(x, relu=relu)).lower(x).as_text()


def test_a_finetune_step_copies_no_trained_kernel(tmp_path):
  # The step donates the trained kernels and updates them in place, so every read of a kernel
  # (its forward, its input gradient) must come before the update in XLA's dataflow; with the two
  # gradients in separate calls it did not, and XLA copied each trained kernel at the start of
  # every step (3 x 9.4 MB for VGG16's block 5). Both gradients in one call: no copy.
  import ml_collections
  from flax import nnx

  from conftest import tiny_shapes_config
  from mlc_jax import models, parallel
  from mlc_jax.train import loop, stages
  c = ml_collections.ConfigDict(tiny_shapes_config(tmp_path).to_dict())
  c.model.arch, c.finetune.unfreeze_blocks = "vgg11", "2"
  model = models.build_model(c, 5, rngs=nnx.Rngs(0))
  mesh = parallel.mesh()
  p = loop.prepare(stages.finetune_stage(c, model, None, None, 10), c, mesh)
  size, n = int(c.image_size), int(c.batch_size)
  batch = parallel.shard_batch({"image": np.zeros((n, size, size, 3), np.uint8),
                                "labels": np.zeros((n, 5), np.float32),
                                "mask": np.ones(n, bool)}, mesh)
  text = p.train_step.lower(p.state, p.frozen, batch, jax.random.PRNGKey(0), 0).compile().as_text()
  # block 4's layers above its lowest one: both gradients and the bias's in one call each
  assert text.count("mlc_onednn_conv_backward_bias") >= 2
  copied = [line for line in text.splitlines()
            if " copy(" in line and "backbone" in line and "kernel" in line]
  assert not copied, copied


def test_primitives_cached_by_shape():
  x, w = _operands(1, 5, 5, 8, 8, 3, seed=3)
  lib = conv.library()
  conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN).block_until_ready()
  size = lib.mlc_conv_cache_size()
  conv.conv_general_dilated(x + 1, w, (1, 1), "SAME", dimension_numbers=DN).block_until_ready()
  assert lib.mlc_conv_cache_size() == size  # same shape: no new primitive
  conv.conv_general_dilated(x[:, :4], w, (1, 1), "SAME", dimension_numbers=DN).block_until_ready()
  assert lib.mlc_conv_cache_size() == size + 1


def test_vgg_routes_its_convolutions_through_the_op():
  model = VGG("vgg11", width=1 / 16, image_size=32)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8))
  text = jax.jit(lambda im: model(im)).lower(images).as_text()
  calls = [line for line in text.splitlines() if "@mlc_onednn_conv_" in line]
  # vgg11's eight convolutions, each with its bias and ReLU in the one call
  assert len(calls) == 8 and all("bias_forward" in c and "relu = 1" in c for c in calls), calls
  with conv.lax_only():
    assert "mlc_onednn_conv" not in jax.jit(lambda im: model(im)).lower(images).as_text()


def test_a_forward_asked_for_inside_lax_only_traces_its_own_program():
  # models.forward caches its jitted functions by model structure; a jit's trace cache does not
  # see lax_only, so the cache keys on it: inside, a program with no oneDNN call (what export
  # needs), outside, the cached one with it.
  from flax import nnx

  from conftest import default_config
  from mlc_jax import models
  c = default_config()
  c.image_size, c.model.width, c.model.weights, c.model.arch = 32, 1 / 16, "", "vgg11"
  graphdef, state = nnx.split(models.build_model(c, 4))
  images = jnp.zeros((2, 32, 32, 3), jnp.uint8)
  outside = models.forward(graphdef)
  assert "mlc_onednn_conv" in outside.lower(state, images).as_text()
  with conv.lax_only():
    inside = models.forward(graphdef)
    assert "mlc_onednn_conv" not in inside.lower(state, images).as_text()
    np.testing.assert_allclose(inside(state, images), outside(state, images), rtol=1e-4,
                               atol=1e-6)
  assert models.forward(graphdef) is outside


def _child(code, **env):
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=subprocess_env(**env))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


SHARDED = """
import json, jax, jax.numpy as jnp, numpy as np
from jax import lax
from mlc_jax import parallel
from mlc_jax.ops import conv
mesh = parallel.mesh()
x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 16))
w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 32)) * 0.1
def loss(fn, x, w):
  return jnp.sum(jnp.tanh(fn(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))))
step = jax.jit(jax.value_and_grad(lambda x, w: loss(conv.conv_general_dilated, x, w), (0, 1)),
               in_shardings=(parallel.data_sharding(mesh), parallel.replicated(mesh)))
ours = step(x, w)
ref = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1))(x, w)
rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
print(json.dumps({"devices": jax.device_count(), "shards": len(ours[1][0].addressable_shards),
                  "value": rel(ours[0], ref[0]), "dx": rel(ours[1][0], ref[1][0]),
                  "dw": rel(ours[1][1], ref[1][1]), "on": conv.available()}))
"""


def test_data_sharding_over_four_devices():
  out = json.loads(_child(SHARDED, xla_flags="--xla_force_host_platform_device_count=4",
                          MLC_JAX_ONEDNN="1").stdout.splitlines()[-1])
  assert out["devices"] == 4 and out["shards"] == 4 and out["on"]
  assert max(out["value"], out["dx"], out["dw"]) <= 1e-5, out


LAYOUTS = """
import json, jax, jax.numpy as jnp
from jax import lax
from mlc_jax.ops import conv
DN = ("NHWC", "HWIO", "NHWC")
x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 16))
w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 32)) * 0.1
b = jax.random.normal(jax.random.PRNGKey(2), (32,))
rel = lambda a, e: float(jnp.linalg.norm(a - e) / jnp.linalg.norm(e))
out = {}
for s in (1, 2):
  ours = lambda x, w, b: conv.onednn_conv_bias(x, w, b, (s, s), ((1, 1), (1, 1)), True)
  ref = lambda x, w, b: jax.nn.relu(lax.conv_general_dilated(x, w, (s, s), ((1, 1), (1, 1)),
                                                             dimension_numbers=DN) + b)
  for name, f in (("ours", ours), ("ref", ref)):
    out[name] = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(3 * f(*a))), (0, 1, 2)))(
        x, w, b)
  out[s] = max(rel(a, e) for a, e in zip(jax.tree.leaves(out.pop("ours")),
                                         jax.tree.leaves(out.pop("ref"))))
print(json.dumps(out))
"""


@pytest.mark.parametrize("bits", ["0", "7"])
def test_nhwc_by_default_and_blocked_activations_where_asked_equal_lax(bits):
  # MLC_JAX_ONEDNN_BLOCKED (bits 1 forward, 2 input gradient, 4 weight gradient; default 0) moves
  # the activations of the kinds it names into oneDNN's blocked layout; ONEDNN_VERBOSE shows the
  # layout each primitive ran on. Values and all three gradients equal lax.conv + b + relu either
  # way.
  env = {"ONEDNN_VERBOSE": "1", "MLC_JAX_ONEDNN": "1",  # empty: the default, whatever ours says
         "MLC_JAX_ONEDNN_BLOCKED": "" if bits == "0" else bits}
  stdout = _child(LAYOUTS, **env).stdout.splitlines()
  errors = json.loads(stdout[-1])
  assert max(errors.values()) <= 1e-5, errors
  layouts = {}  # kind -> the source (or its gradient) layouts it ran on
  for line in stdout:
    fields = line.split(",")
    if line.startswith("onednn_verbose,") and "exec" in fields and "convolution" in fields:
      kind = fields[fields.index("convolution") + 2]
      layouts.setdefault(kind, set()).add(fields[fields.index("convolution") + 3].split()[0])
  assert set(layouts) == {"forward_training", "backward_data", "backward_weights"}, layouts
  for kind, seen in layouts.items():
    blocked = {fmt for fmt in seen if not fmt.endswith("blocked:acdb::f0")}
    assert (blocked == seen) if bits == "7" else not blocked, (kind, seen)


FALLBACK = """
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from mlc_jax.models import VGG
from mlc_jax.ops import conv
model = VGG("vgg11", width=1 / 16, image_size=32)
images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8))
a = model(images)
b = jax.jit(lambda im: model(im))(images)
assert not conv.available()
assert "mlc_onednn_conv" not in jax.jit(lambda im: model(im)).lower(images).as_text()
with conv.lax_only():
  assert float(jnp.max(jnp.abs(a - b))) < 1e-4
print("done")
"""


@pytest.mark.parametrize("env,why", [({"MLC_JAX_ONEDNN": "0"}, "MLC_JAX_ONEDNN=0"),
                                     ({"MLC_JAX_ONEDNN": "1",
                                       "MLC_JAX_ONEDNN_LIB": "/nonexistent/libmlc_conv.so"},
                                      "/nonexistent/libmlc_conv.so is not built")])
def test_off_or_missing_falls_back_to_lax_and_says_so_once(env, why):
  proc = _child(FALLBACK, **env)
  assert proc.stdout.strip().endswith("done")
  lines = [line for line in proc.stderr.splitlines() if "CPU convolutions use lax.conv" in line]
  assert len(lines) == 1 and why in lines[0], proc.stderr[-2000:]


def test_calling_the_op_itself_with_the_library_off_says_why(monkeypatch):
  # conv_general_dilated and Conv fall back to lax.conv; the op's own functions cannot.
  monkeypatch.setattr(conv, "_LIB", {"tried": True, "lib": None, "why": "MLC_JAX_ONEDNN=0 (test)"})
  x, w = _operands(1, 4, 4, 8, 8, 3)
  with pytest.raises(RuntimeError, match=r"off: MLC_JAX_ONEDNN=0 \(test\)"):
    conv.onednn_conv_bias(x, w, jnp.zeros(8), (1, 1), ((1, 1), (1, 1)), True)
  with pytest.raises(RuntimeError, match="MLC_JAX_ONEDNN=0"):
    conv.onednn_conv(x, w, (1, 1), ((1, 1), (1, 1)))
