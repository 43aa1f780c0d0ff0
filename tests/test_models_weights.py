"""ImageNet weight files: parity with Keras's VGG16 for the Keras HDF5 and torchvision layouts, the
timm and batch-norm layouts against Keras-built references, bad files, and the download path."""
import functools
import hashlib
import http.server
import os
import threading

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
from flax import nnx

import weight_files as wf
from mlc_jax.inference.classifier import load_imagenet
from mlc_jax.errors import UserError
from mlc_jax import models
from mlc_jax.models import VGG, imagenet, load_backbone_weights
from mlc_jax.models import weights as weights_lib
from conftest import default_config, forward

TOL = 1e-4


@functools.lru_cache(maxsize=None)
def keras():
  import keras as k  # noqa: PLC0415 - TensorFlow starts only for the tests that need it
  k.utils.set_random_seed(0)  # Keras's own initial kernels, which randomise() rescales
  return k


def randomise(model, seed):
  """Rescales Keras's glorot kernels to He scale and draws biases, so signals neither vanish nor
  explode through 16 layers and the biases' loading is checked too."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if layer.get_weights():
      kernel, bias = layer.get_weights()
      fan_in, fan_out = np.prod(kernel.shape[:-1]), kernel.shape[-1] * np.prod(kernel.shape[:-2])
      layer.set_weights([kernel * np.sqrt((fan_in + fan_out) / fan_in),
                         rng.normal(0, 0.1, bias.shape).astype(np.float32)])


def calibrate_top(model, inputs):
  """Scales `predictions` so the logits' spread is about 3: softmax neither flat nor saturated."""
  fc2 = keras().Model(model.inputs, model.get_layer("fc2").output).predict(inputs, verbose=0)
  kernel, bias = model.get_layer("predictions").get_weights()
  scale = 3.0 / np.std(fc2 @ kernel + bias)
  model.get_layer("predictions").set_weights([kernel * scale, bias * scale])


def keras_weights(model):
  return {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}


def softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def keras_top():
  model = keras().applications.VGG16(weights=None, include_top=True, classifier_activation=None)
  randomise(model, seed=1)
  images = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  yield model, images
  del model


def test_keras_h5_top_224_matches_keras(keras_top, tmp_path):
  model, images = keras_top
  caffe = keras().applications.vgg16.preprocess_input
  calibrate_top(model, caffe(images.astype(np.float32)))
  path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
  wf.write_keras_h5(path, keras_weights(model), attrs="bytes", naming="legacy")
  reference = model.predict(caffe(images.astype(np.float32)), verbose=0)
  classifier = load_imagenet(path)
  logits = forward(classifier.model, images)
  probs = classifier.predict(images)
  print(f"keras h5 top 224: logits rel err {wf.rel_err(logits, reference):.2e}, "
        f"probs rel err {wf.rel_err(probs, softmax(reference)):.2e}")
  assert wf.rel_err(logits, reference) <= TOL
  assert wf.rel_err(probs, softmax(reference)) <= TOL
  assert 0.01 < softmax(reference).max() < 0.9  # not saturated: a wrong input shows in the probs
  # An RGB/BGR mix-up (Keras fed the other channel order) would miss by far more than TOL.
  swapped = model.predict(caffe(images[..., ::-1].astype(np.float32)), verbose=0)
  assert wf.rel_err(logits, swapped) > 100 * TOL
  assert wf.rel_err(probs, softmax(swapped)) > 100 * TOL


def test_torchvision_safetensors_top_224_matches_keras(keras_top, tmp_path):
  model, images = keras_top
  calibrate_top(model, wf.torch_preprocess(images))
  path = tmp_path / "vgg16.safetensors"
  weights = keras_weights(model)
  wf.write_torchvision(path, weights, "vgg16")
  reference = model.predict(wf.torch_preprocess(images), verbose=0)
  classifier = load_imagenet(path)
  vgg = classifier.model
  assert vgg.preprocessing == "torch"
  logits = forward(vgg, images)
  probs = classifier.predict(images)
  print(f"torchvision safetensors top 224: logits rel err {wf.rel_err(logits, reference):.2e}, "
        f"probs rel err {wf.rel_err(probs, softmax(reference)):.2e}")
  assert wf.rel_err(logits, reference) <= TOL
  assert wf.rel_err(probs, softmax(reference)) <= TOL
  assert 0.01 < softmax(reference).max() < 0.9
  # fc1 rows left in torch's CHW flatten order would miss by far more than TOL.
  kernel = weights["fc1"][0]
  chw_rows = kernel.reshape(7, 7, 512, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
  vgg.fc1.kernel.set_value(chw_rows)
  assert wf.rel_err(forward(vgg, images), reference) > 100 * TOL
  vgg.fc1.kernel.set_value(kernel)
  swapped = model.predict(wf.torch_preprocess(images[..., ::-1]), verbose=0)
  assert wf.rel_err(logits, swapped) > 100 * TOL


def test_headless_64_matches_keras_both_layouts(tmp_path):
  model = keras().applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
  randomise(model, seed=3)
  weights = keras_weights(model)
  images = np.random.default_rng(4).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  h5 = tmp_path / "notop.h5"
  wf.write_keras_h5(h5, weights, attrs="str", naming="keras2")
  st = tmp_path / "notop.safetensors"
  wf.write_torchvision(st, weights, "vgg16")
  caffe_map = model.predict(keras().applications.vgg16.preprocess_input(
      images.astype(np.float32)), verbose=0)
  torch_map = model.predict(wf.torch_preprocess(images), verbose=0)
  for path, conv, ref_map, other in ((h5, "caffe", caffe_map, "avg"), (st, "torch", torch_map, "max")):
    assert weights_lib.convention_for(str(path)) == conv
    references = {"flatten": ref_map.reshape(3, -1), "avg": ref_map.mean((1, 2)),
                  "max": ref_map.max((1, 2))}
    for pooling in ("flatten", other):
      reference = references[pooling]
      vgg = nnx.eval_shape(lambda: VGG("vgg16", pooling=pooling, image_size=64, preprocessing=conv))
      weights_lib.load_into(vgg, path)  # an abstract model: every array comes from the file
      err = wf.rel_err(forward(vgg, images), reference)
      print(f"headless 64 px {conv} {pooling}: rel err {err:.2e}")
      assert err <= TOL


def keras_vgg11_bn(image_size, width, blocks=(1, 1, 2, 2, 2), classes=1000):
  """A Keras VGG11 (or other `blocks`) with batch norm after each conv (torchvision's vgg11_bn),
  at `width`."""
  k = keras()
  chans = [max(1, round(c * width)) for c in (64, 128, 256, 512, 512)]
  x = inputs = k.Input((image_size, image_size, 3))
  for b, n in enumerate(blocks, 1):
    for i in range(1, n + 1):
      x = k.layers.Conv2D(chans[b - 1], 3, padding="same", name=f"block{b}_conv{i}")(x)
      x = k.layers.BatchNormalization(epsilon=1e-5, name=f"block{b}_bn{i}")(x)
      x = k.layers.ReLU()(x)
    x = k.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
  x = k.layers.Flatten()(x)
  units = round(4096 * width)
  x = k.layers.Dense(units, activation="relu", name="fc1")(x)
  x = k.layers.Dense(units, activation="relu", name="fc2")(x)
  return k.Model(inputs, k.layers.Dense(classes, name="predictions")(x))


def test_batchnorm_torchvision_and_timm_layouts_match_keras(tmp_path):
  model = keras_vgg11_bn(224, 1 / 16)
  weights = wf.random_weights("vgg11", 1 / 16, top=True, bn=True, seed=5)
  for name, arrays in weights.items():
    model.get_layer(name).set_weights(arrays)
  images = np.random.default_rng(6).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  reference = model.predict(wf.torch_preprocess(images), verbose=0)
  for writer in (wf.write_torchvision, wf.write_timm):
    path = tmp_path / f"{writer.__name__}.safetensors"
    writer(path, weights, "vgg11")
    vgg = VGG("vgg11", include_top=True, batch_norm=True, width=1 / 16, preprocessing="torch")
    weights_lib.load_into(vgg, path)
    err = wf.rel_err(forward(vgg, images), reference)
    print(f"vgg11_bn {writer.__name__}: rel err {err:.2e}")
    assert err <= TOL


def tiny_h5(path, arch="vgg16", width=1 / 16, **kw):
  wf.write_keras_h5(path, wf.random_weights(arch, width, **kw))
  return str(path)


def test_written_keras_file_is_read_by_keras_and_by_us(tmp_path):
  """weights.write_keras_h5 of a model (VGG16-BN at 1/16 width, 32 px, top + a 16-class dense
  head): Keras's own load_weights builds a model that predicts what ours predicts, our reader
  gives back every array exactly, and the file's preprocessing becomes model.weights'."""
  config = default_config()
  config.image_size, config.head.hidden = 32, ()
  config.model.update(arch="vgg16", width=1 / 16, batch_norm=True, include_top=True, weights="",
                      preprocessing="unit")
  model = models.build_model(config, 16)
  rng = np.random.default_rng(7)
  for name in model.backbone.layer_names:  # batch statistics away from 0/1, so their load shows
    layer = getattr(model.backbone, name)
    if "_bn" in name:
      layer.mean.set_value(rng.normal(0, 0.2, layer.mean.get_value().shape).astype(np.float32))
      layer.var.set_value(rng.uniform(0.5, 2, layer.var.get_value().shape).astype(np.float32))
      layer.bias.set_value(rng.normal(0, 0.1, layer.bias.get_value().shape).astype(np.float32))
  layers = models.keras_layers(model)
  assert list(layers)[-3:] == ["fc1", "fc2", "predictions"] and len(layers) == 13 * 2 + 3
  path = weights_lib.write_keras_h5(tmp_path / "pretrained.h5", layers,
                                    {"preprocessing": "unit", "labels": "[]"})
  assert weights_lib.file_attrs(path) == {"preprocessing": "unit", "labels": "[]"}
  assert weights_lib.convention_for(str(path)) == "unit"
  back = weights_lib.read_weights(path)
  assert list(back) == list(layers)
  for name, params in layers.items():
    for p, array in params.items():
      np.testing.assert_array_equal(back[name][p], array, err_msg=f"{name}/{p}")
  reference = keras_vgg11_bn(32, 1 / 16, blocks=(2, 2, 3, 3, 3), classes=16)
  reference.load_weights(str(path))
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  ours = np.asarray(forward(model, images))
  theirs = reference.predict(images.astype(np.float32) / 255.0, verbose=0)
  assert wf.rel_err(ours, theirs) <= 1e-5, wf.rel_err(ours, theirs)
  unloaded = keras_vgg11_bn(32, 1 / 16, blocks=(2, 2, 3, 3, 3), classes=16)
  assert wf.rel_err(ours, unloaded.predict(images / 255.0, verbose=0)) > 0.1  # the load matters
  fresh = models.build_model(config, 16, rngs=nnx.Rngs(99))  # another init, then the file
  weights_lib.load_into(fresh.backbone, path)
  fresh.head.predictions.kernel.set_value(back["predictions"]["kernel"])
  fresh.head.predictions.bias.set_value(back["predictions"]["bias"])
  np.testing.assert_array_equal(np.asarray(forward(fresh, images)), ours)


def test_bad_files_name_file_layer_and_shapes(tmp_path):
  vgg = VGG("vgg16", width=1 / 16, image_size=32)
  text = tmp_path / "notes.h5"
  text.write_text("not weights")
  with pytest.raises(UserError, match=r"notes\.h5 is not an HDF5 file"):
    weights_lib.load_into(vgg, text)
  with pytest.raises(UserError, match=r"missing\.h5 does not exist"):
    weights_lib.load_into(vgg, tmp_path / "missing.h5")
  other = tiny_h5(tmp_path / "vgg19.h5", "vgg19")
  with pytest.raises(UserError, match=r"vgg19\.h5.*block3_conv4.*for vgg19"):
    weights_lib.load_into(vgg, other)
  gap = tmp_path / "gap.h5"
  wf.write_keras_h5(gap, wf.random_weights("vgg16", 1 / 16), drop=("block5_conv3",))
  with pytest.raises(UserError, match=r"gap\.h5.*block5_conv3: expected \{'kernel': \(3, 3, 32, 32\)"
                     r".*found no such layer"):
    weights_lib.load_into(vgg, gap)
  wide = tiny_h5(tmp_path / "wide.h5", width=1 / 8)
  with pytest.raises(UserError, match=r"wide\.h5.*block1_conv1 kernel: expected shape \(3, 3, 3, 4\), "
                     r"found \(3, 3, 3, 8\)"):
    weights_lib.load_into(vgg, wide)
  bn = tmp_path / "bn.safetensors"
  wf.write_torchvision(bn, wf.random_weights("vgg16", 1 / 16, bn=True), "vgg16")
  with pytest.raises(UserError, match=r"bn\.safetensors.*block1_bn1.*vgg16_bn"):
    weights_lib.load_into(vgg, bn)
  junk = tmp_path / "junk.safetensors"
  junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(UserError, match=r"junk\.safetensors is not a readable safetensors"):
    weights_lib.load_into(vgg, junk)
  with pytest.raises(UserError, match="model.weights='w.pt'"):
    weights_lib.convention_for("w.pt")


class _Server:
  """http.server on 127.0.0.1 in a thread, serving a directory and counting requests."""

  def __init__(self, directory):
    server = self
    self.requests = 0

    class Handler(http.server.SimpleHTTPRequestHandler):
      def __init__(self, *a, **kw):
        super().__init__(*a, directory=str(directory), **kw)

      def do_GET(self):
        server.requests += 1
        super().do_GET()

      def log_message(self, *a):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
  served = tmp_path / "served"
  served.mkdir()
  s = _Server(served)
  s.dir = served
  yield s
  s.close()


def test_fetch_checks_hash_and_writes_atomically(server, tmp_path):
  name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  data = os.urandom(3 << 20)
  (server.dir / name).write_bytes(data)
  cache = tmp_path / "cache"
  bad = hashlib.sha256(b"other").hexdigest()
  with pytest.raises(UserError, match=rf"sha256 {hashlib.sha256(data).hexdigest()}, expected {bad}"):
    weights_lib.fetch(name, cache, url=server.url + name, sha256=bad)
  assert os.listdir(cache) == []  # no partial or temporary file left behind
  with pytest.raises(UserError, match=r"md5 .*expected 6d6bbae143d832006294945121d1f1fc"):
    weights_lib.fetch(name, cache, url=server.url + name)  # known name: Keras's published md5
  assert os.listdir(cache) == []
  with pytest.raises(UserError, match="cannot download"):
    weights_lib.fetch(name, cache, url=server.url + "absent.h5", sha256=bad)
  path = weights_lib.fetch(name, cache, url=server.url + name, sha256=hashlib.sha256(data).hexdigest())
  assert open(path, "rb").read() == data and os.listdir(cache) == [name]
  requests = server.requests
  assert weights_lib.fetch(name, cache) == path and server.requests == requests  # cached: no download


def test_imagenet_weights_come_from_the_cache_or_a_checked_mirror(server, tmp_path):
  config = default_config()
  config.model.weights, config.model.width, config.image_size = "imagenet", 1 / 16, 32
  config.model.cache_dir = str(tmp_path / "cache")
  name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  tiny_h5(server.dir / name)
  config.model.weights_url = server.url + name  # a mirror must serve the published file
  vgg = VGG("vgg16", width=1 / 16, image_size=32)
  with pytest.raises(UserError, match="md5 .* was not kept"):
    load_backbone_weights(vgg, config)
  assert os.listdir(config.model.cache_dir) == []
  os.replace(server.dir / name, tmp_path / "cache" / name)  # as if downloaded and checked before
  load_backbone_weights(vgg, config)
  expected = wf.random_weights("vgg16", 1 / 16)["block5_conv3"][0]
  np.testing.assert_array_equal(vgg.block5_conv3.kernel[...], expected)
