"""ResNet-50/101: parity with keras.applications (layout 'keras': ResNet50, its random weights
written to a legacy .h5 and read by us; the layout's differences do not depend on the depth) and
with torchvision's own code (layout 'torchvision', resnet50 and resnet101, logits committed by
tests/fixtures/make_resnet_torchvision_reference.py); misfit files; blocks and freezing."""
import functools
import os
import re
import urllib.error

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

import resnet_reference as ref
import weight_files as wf
from mlc_jax.errors import UserError
from mlc_jax.models import backbone as backbone_lib, families, resnet, resnet_weights
from mlc_jax.models import weights as weights_lib
from mlc_jax.models.resnet import ResNet
from mlc_jax.train import optim
from conftest import default_config

TOL = 1e-4
SIZE = 64
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "resnet_torchvision_logits.npz")


@functools.lru_cache(maxsize=None)
def keras():
  import keras as k  # noqa: PLC0415 - TensorFlow starts only for the tests that need it
  k.utils.set_random_seed(0)
  return k


def randomise(model, seed):
  """He-normal kernels, random biases, batch norms with statistics away from 0/1 and small gains
  on each unit's last (so 16-33 units neither vanish nor explode)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    arrays = layer.get_weights()
    if not arrays:
      continue
    if isinstance(layer, keras().layers.BatchNormalization):
      ch = arrays[0].shape
      gain = rng.uniform(0.1, 0.4, ch) if layer.name.endswith("_3_bn") else rng.uniform(0.5, 1, ch)
      arrays = [gain, rng.normal(0, 0.1, ch), rng.normal(0, 0.2, ch), rng.uniform(0.5, 2, ch)]
    else:
      kernel = arrays[0]
      arrays = [rng.standard_normal(kernel.shape) * np.sqrt(2 / np.prod(kernel.shape[:-1])),
                rng.normal(0, 0.1, arrays[1].shape)]
    layer.set_weights([a.astype(np.float32) for a in arrays])


def calibrate_top(model, inputs):
  """Scales `predictions` so the logits' spread is about 3: softmax neither flat nor saturated."""
  pooled = keras().Model(model.inputs, model.get_layer("avg_pool").output).predict(inputs, verbose=0)
  kernel, bias = model.get_layer("predictions").get_weights()
  scale = 3.0 / np.std(pooled @ kernel + bias)
  model.get_layer("predictions").set_weights([kernel * scale, bias * scale])


def keras_file(model, path):
  """model's weights as a legacy Keras .h5 (keras.applications' own files' layout)."""
  wf.write_keras_h5(path, {l.name: l.get_weights() for l in model.layers if l.get_weights()},
                    attrs="bytes", naming="keras2", extra_layers=False)
  return str(path)


def caffe(images):
  return keras().applications.resnet.preprocess_input(images.astype(np.float32))


def forward(model, images):
  return np.asarray(model(images))


def keras_eps(model):
  return {l.epsilon for l in model.layers if isinstance(l, keras().layers.BatchNormalization)}


def our_eps(model):
  return {getattr(model, n).epsilon for n in model.layer_names if resnet.is_bn(n)}


@pytest.fixture(scope="module")
def keras50(tmp_path_factory):
  """Keras ResNet50 at 64 px with random weights: (top model, images, top .h5, notop .h5)."""
  k, tmp = keras(), tmp_path_factory.mktemp("keras50")
  top = k.applications.ResNet50(weights=None, include_top=True, input_shape=(SIZE, SIZE, 3),
                                classifier_activation=None)
  randomise(top, seed=1)
  images = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  calibrate_top(top, caffe(images))
  notop = k.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
  for layer in notop.layers:
    if layer.get_weights():
      layer.set_weights(top.get_layer(layer.name).get_weights())
  yield (top, notop, images, keras_file(top, tmp / "resnet50_top.h5"),
         keras_file(notop, tmp / "resnet50_notop.h5"))
  del top, notop


def test_keras_resnet50_top_notop_and_tapped_match_keras(keras50):
  top, notop, images, top_file, notop_file = keras50
  reference = top.predict(caffe(images), verbose=0)
  assert 0.02 < np.max(np.exp(reference) / np.exp(reference).sum(1, keepdims=True)) < 0.9
  ours = nnx.eval_shape(lambda: ResNet("resnet50", layout="keras", include_top=True,
                                       image_size=SIZE, preprocessing="caffe"))
  resnet_weights.load_into(ours, top_file)  # an abstract model: every array comes from the file
  assert our_eps(ours) == keras_eps(top)
  err = wf.rel_err(forward(ours, images), reference)
  print(f"keras resnet50 top {SIZE} px: logits rel err {err:.2e}")
  assert err <= TOL
  fmap = notop.predict(caffe(images), verbose=0)
  for path in (notop_file, top_file):  # a headless model ignores the file's top
    for pooling, want in ((None, fmap), ("avg", fmap.mean((1, 2)))):
      headless = ResNet("resnet50", layout="keras", pooling=pooling, image_size=SIZE,
                        preprocessing="caffe")
      resnet_weights.load_into(headless, path)
      err = wf.rel_err(forward(headless, images), want)
      print(f"keras resnet50 notop {os.path.basename(path)} pooling={pooling}: rel err {err:.2e}")
      assert err <= TOL
  tap = keras().Model(notop.inputs, notop.get_layer("conv4_block6_out").output)
  tapped = ResNet("resnet50", layout="keras", pooling=None, blocks=4, image_size=SIZE,
                  preprocessing="caffe")
  resnet_weights.load_into(tapped, notop_file)
  err = wf.rel_err(forward(tapped, images), tap.predict(caffe(images), verbose=0))
  print(f"keras resnet50 tapped at block 4: rel err {err:.2e}")
  assert err <= TOL


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
  """{arch: safetensors path} of the numpy-drawn torchvision state_dicts (with num_batches_tracked)."""
  tmp, paths = tmp_path_factory.mktemp("tv"), {}
  for arch in ref.DEPTHS:
    tensors = ref.draw(arch)
    tensors["bn1.num_batches_tracked"] = np.array(5, np.int64)
    paths[arch] = str(tmp / f"{arch}.safetensors")
    save_file(tensors, paths[arch])
  return paths


@pytest.mark.parametrize("arch", list(ref.DEPTHS))
def test_torchvision_matches_torchvision_logits(arch, torchvision_files):
  with np.load(FIXTURE) as z:
    reference, eps = z[arch], float(z["bn_eps"])
  path = torchvision_files[arch]
  assert weights_lib.convention_for(path) == "torch"
  ours = ResNet(arch, include_top=True, image_size=ref.IMAGE_SIZE, preprocessing="torch")
  resnet_weights.load_into(ours, path)
  assert our_eps(ours) == {eps}
  err = wf.rel_err(forward(ours, ref.images()), reference)
  print(f"torchvision {arch} top {ref.IMAGE_SIZE} px: logits rel err {err:.2e}")
  assert err <= TOL


def misfit(model, path):
  with pytest.raises(UserError) as e:
    resnet_weights.load_into(model, path)
  line = str(e.value)
  assert "\n" not in line and path in line, line
  return line


def abstract(arch="resnet50", **kw):
  return nnx.eval_shape(lambda: ResNet(arch, image_size=SIZE, **kw))


def test_misfit_files_say_which_keys_to_set(keras50, torchvision_files, tmp_path):
  _, _, _, top_file, notop_file = keras50
  line = misfit(abstract(layout="torchvision"), top_file)
  print(line)
  assert "keras-layout resnet50" in line and "model.resnet_layout" in line
  line = misfit(abstract("resnet101", layout="torchvision"), torchvision_files["resnet50"])
  print(line)
  assert "torchvision-layout resnet50" in line and "model.arch" in line
  line = misfit(abstract(layout="torchvision", width=0.5), torchvision_files["resnet50"])
  print(line)
  assert "width 1" in line and "width 0.5" in line and "model.width" in line
  line = misfit(abstract(layout="keras", include_top=True), notop_file)
  print(line)
  assert "no ImageNet top" in line and "model.include_top" in line
  vgg = tmp_path / "vgg11.safetensors"
  wf.write_torchvision(vgg, wf.random_weights("vgg11", 1 / 16), "vgg11")
  line = misfit(abstract(), str(vgg))
  print(line)
  assert "holds features.0." in line and "not a torchvision resnet50/101" in line


def test_imagenet_file_names_url_and_torchvision_refusal(monkeypatch, tmp_path):
  config = default_config()
  config.model.update(arch="resnet101", resnet_layout="keras", include_top=False)
  family = families.of("resnet101")
  assert family.cls is ResNet
  name = family.imagenet_file(config)
  assert name == "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"  # keras/.../resnet.py's
  asked = []

  def refuse(url, timeout):
    asked.append(url)
    raise urllib.error.URLError("offline")
  monkeypatch.setattr(weights_lib.urllib.request, "urlopen", refuse)
  with pytest.raises(UserError):
    weights_lib.fetch(name, str(tmp_path))
  assert asked == ["https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + name]
  config.model.resnet_layout = "torchvision"
  with pytest.raises(UserError, match="model.resnet_layout='keras'") as e:
    family.imagenet_file(config)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("layout", resnet.LAYOUTS)
def test_block_b_ends_at_stride_2_to_the_b_and_unfreeze_blocks_train_the_top_ones(layout):
  size = 64
  images = np.zeros((1, size, size, 3), np.uint8)
  for b in range(1, 6):
    tapped = ResNet("resnet50", layout=layout, pooling=None, blocks=b, width=1 / 16, image_size=size)
    assert forward(tapped, images).shape[1:3] == (size // 2 ** b,) * 2 == (tapped.map_size,) * 2
  model = ResNet("resnet50", layout=layout, include_top=True, width=1 / 16, image_size=size)
  paths = ["backbone/" + "/".join(str(p) for p in path)
           for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  blocks = {backbone_lib.block_of(p) for p in paths}
  assert blocks == {1, 2, 3, 4, 5, 6} and all(
      (backbone_lib.block_of(p) == 6) == p.startswith("backbone/predictions/") for p in paths)
  for n in range(6):
    frozen = [re.compile(regex) for regex, spec in optim.unfreeze_groups(n) if spec is None]
    trained = {p for p in paths if not any(r.fullmatch(p) for r in frozen)}
    # n blocks from the top train (n=0: none, the ImageNet top frozen too: the head alone trains)
    assert trained == {p for p in paths if 5 - n < backbone_lib.block_of(p) < 6 or
                       (n > 0 and backbone_lib.block_of(p) == 6)}, n
