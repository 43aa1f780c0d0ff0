"""--format=onnx / Classifier.export(format='onnx'): onnxruntime's probabilities equal
Classifier.predict (the jitted JAX model) within 1e-4, for every architecture and option we train,
a full-width VGG16 with its top at 224 px, load_imagenet, and a bfloat16-trained model (exported
in float32); a model the mapping does not cover is one clear error before anything is written."""
import numpy as np
import pytest
from flax import nnx

from conftest import default_config
import mlc_jax
from mlc_jax import models
from mlc_jax.errors import UserError
from mlc_jax.inference.classifier import Classifier
from mlc_jax.models import weights as weights_lib


def _onnx_scores(folder, images):
  import onnxruntime
  session = onnxruntime.InferenceSession(str(folder / "model.onnx"),
                                         providers=["CPUExecutionProvider"])
  return session.run(None, {"images": images})[0]


def _model(arch="vgg16", batch_norm=True, pooling="max", include_top=False, width=1 / 8,
           size=64, convention="caffe", hidden=(256,), dtype="float32", classes=5,
           layout="torchvision", blocks=5):
  c = default_config()
  c.model.arch, c.model.batch_norm, c.model.pooling = arch, batch_norm, pooling
  c.model.resnet_layout, c.model.blocks = layout, blocks
  c.model.include_top, c.model.width, c.model.preprocessing = include_top, width, convention
  c.image_size, c.head.hidden, c.dtype = size, hidden, dtype
  return _randomise(models.build_model(c, classes))


def _randomise(model):
  """Batch-norm statistics, scales and every bias (zeros or ones as built) drawn at random, so
  that each of them matters to the output."""
  rng = np.random.default_rng(1)
  for path, var in nnx.to_flat_state(nnx.state(model, models.SAVED)):
    shape = var.get_value().shape
    if path[-1] in ("var", "scale"):
      var.set_value(np.asarray(rng.uniform(0.5, 2.0, shape), np.float32))
    elif path[-1] == "mean":
      var.set_value(np.asarray(rng.normal(0, 0.5, shape), np.float32))
    elif path[-1] == "bias":
      var.set_value(np.asarray(rng.normal(0, 0.2, shape), np.float32))
  return model


CASES = {  # the demo's model first; then each architecture, pooling, top and activation
    "demo vgg16_bn max 64px": dict(),
    "vgg11 avg torch softmax": dict(arch="vgg11", batch_norm=False, pooling="avg",
                                    convention="torch"),
    "vgg13_bn flatten unit linear head": dict(arch="vgg13", pooling="flatten", convention="unit",
                                              hidden=()),
    "vgg19 avg two hidden layers tf": dict(arch="vgg19", batch_norm=False, pooling="avg",
                                           hidden=(64, 32), convention="tf"),
    "vgg16 with top at 32 px": dict(batch_norm=False, include_top=True, size=32),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_onnxruntime_equals_classifier_predict(case, activation, tmp_path):
  kw = CASES[case]
  size = kw.get("size", 64)
  clf = Classifier(_model(**kw), list("abcde"), image_size=size, activation=activation)
  images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  folder = clf.export(tmp_path / "out", format="onnx")
  got = _onnx_scores(folder, images)
  assert got.dtype == np.float32 and got.shape == (3, 5)
  np.testing.assert_allclose(got, clf.predict(images), atol=1e-4, rtol=0)
  assert (folder / "labels.txt").read_text().split() == list("abcde")


FAMILY_CASES = {  # ResNet (both layouts) and EfficientNet-Lite0 at tiny widths; VGG's block tap
    "resnet50 torchvision avg torch sigmoid": dict(arch="resnet50", pooling="avg", width=1 / 16,
                                                   convention="torch", hidden=(32,)),
    "resnet50 keras max caffe linear head softmax": dict(
        arch="resnet50", layout="keras", pooling="max", width=1 / 16, hidden=(),
        activation="softmax"),
    "resnet50 keras top (pooled, no predictions) two hidden": dict(
        arch="resnet50", layout="keras", include_top=True, width=1 / 16, hidden=(16, 8)),
    "resnet50 torchvision blocks 3 flatten unit": dict(arch="resnet50", pooling="flatten",
                                                       width=1 / 16, convention="unit", blocks=3),
    "resnet50 torchvision blocks 1 (stem only) avg": dict(arch="resnet50", pooling="avg",
                                                          width=1 / 16, blocks=1, hidden=(8,)),
    "efficientnet_lite0 max 50px (SAME both ways) softmax": dict(
        arch="efficientnet_lite0", pooling="max", width=1 / 4, convention="tf", size=50,
        hidden=(), activation="softmax"),
    "efficientnet_lite0 top at 50px two hidden": dict(
        arch="efficientnet_lite0", include_top=True, width=1 / 4, convention="tf", size=50,
        hidden=(16, 8)),
    "efficientnet_lite0 blocks 4 flatten 45px": dict(
        arch="efficientnet_lite0", pooling="flatten", width=1 / 4, convention="tf", size=45,
        blocks=4),
    "vgg16_bn blocks 4 avg": dict(pooling="avg", blocks=4),
}


def _parity(model, size, activation, folder, classes):
  """(onnxruntime's probabilities, Classifier.predict's) on 3 random images. The last layer is
  first rescaled so that its logits on these images are centred with unit spread: probabilities
  away from 0 and 1, where a wrong layer shows (a saturated sigmoid would hide it)."""
  images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  last = model.head.predictions if hasattr(model, "head") else model.predictions
  logits = np.asarray(model(images), np.float64)
  spread = (logits - logits.mean(0)).std() + 1e-12
  last.kernel.set_value(np.asarray(last.kernel.get_value() / spread, np.float32))
  last.bias.set_value(np.asarray((last.bias.get_value() - logits.mean(0)) / spread, np.float32))
  clf = Classifier(model, classes, image_size=size, activation=activation)
  got, want = _onnx_scores(clf.export(folder, format="onnx"), images), clf.predict(images)
  print(f"max |onnx - jax| {np.abs(got - want).max():.2e}, probabilities in "
        f"[{want.min():.3f}, {want.max():.3f}]")
  return got, want


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_every_backbone_family_exports(case, tmp_path):
  kw = dict(FAMILY_CASES[case])
  activation, size = kw.pop("activation", "sigmoid"), kw.get("size", 64)
  got, want = _parity(_model(**kw), size, activation, tmp_path / "out", list("abcde"))
  assert got.dtype == np.float32 and got.shape == (3, 5)
  assert want.max() - want.min() > 0.2  # scores that differ, none saturated
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch, kw", [("resnet50", dict(layout="torchvision", width=1 / 16)),
                                      ("resnet101", dict(layout="keras", width=1 / 32)),
                                      ("efficientnet_lite0", dict(width=1 / 4))])
def test_an_imagenet_classifier_of_each_family_with_its_predictions_layer(arch, kw, tmp_path):
  from mlc_jax.models import efficientnet_lite, resnet
  cls = efficientnet_lite.EfficientNetLite if arch == "efficientnet_lite0" else resnet.ResNet
  net = _randomise(cls(arch, include_top=True, num_classes=10, image_size=64, rngs=nnx.Rngs(2),
                       **kw))
  got, want = _parity(net, 64, "softmax", tmp_path / "out", [f"c{i}" for i in range(10)])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_the_real_efficientnet_lite0_exports_and_still_sees_a_tiger_cat(tmp_path):
  """load_imagenet('efficientnet-lite0') (the real weights, the cache make test's demo-inputs
  fills) on scikit-image's chelsea photo: onnxruntime equals Classifier.predict."""
  from skimage import data
  from test_models_efficientnet_lite import authors_eval_crop
  clf = mlc_jax.load_imagenet("efficientnet-lite0")
  images = authors_eval_crop(data.chelsea())[None]
  got = _onnx_scores(clf.export(tmp_path / "lite0", format="onnx"), images)
  want = clf.predict(images)
  print(f"max |onnx - jax| {np.abs(got - want).max():.2e}")
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert clf.labels[int(np.argmax(got[0]))] == "tiger cat"


def test_a_full_vgg16_with_its_top_at_224_px(tmp_path):
  from mlc_jax.models.vgg import VGG
  net = VGG("vgg16", include_top=True, num_classes=1000, image_size=224, preprocessing="caffe",
            rngs=nnx.Rngs(0))
  clf = Classifier(net, [f"c{i}" for i in range(1000)], image_size=224, activation="softmax")
  images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  folder = clf.export(tmp_path / "vgg16", format="onnx")
  np.testing.assert_allclose(_onnx_scores(folder, images), clf.predict(images), atol=1e-4,
                             rtol=0)


def test_load_imagenet_exports(tmp_path):
  from mlc_jax.models.vgg import VGG
  net = VGG("vgg11", include_top=True, num_classes=1000, width=1 / 16, image_size=224,
            preprocessing="caffe", rngs=nnx.Rngs(3))
  path = tmp_path / "vgg11_imagenet.h5"  # an ImageNet file with the top, as Keras lays it out
  layers = {name: {p: np.asarray(getattr(getattr(net, name), p).get_value(), np.float32)
                   for p in weights_lib.param_names(name)} for name in net.layer_names}
  weights_lib.write_keras_h5(path, layers, {})
  clf = mlc_jax.load_imagenet(str(path))
  images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  folder = clf.export(tmp_path / "imagenet", format="onnx")
  np.testing.assert_allclose(_onnx_scores(folder, images), clf.predict(images), atol=1e-4,
                             rtol=0)


def test_a_bfloat16_model_exports_in_float32(tmp_path):
  bf16 = _model(dtype="bfloat16")
  f32 = _model(dtype="float32")  # the same parameters (same seed and statistics), float32 compute
  for (pa, a), (pb, b) in zip(nnx.to_flat_state(nnx.state(bf16, models.SAVED)),
                              nnx.to_flat_state(nnx.state(f32, models.SAVED))):
    assert pa == pb
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  folder = Classifier(bf16, list("abcde"), image_size=64).export(tmp_path / "o", format="onnx")
  np.testing.assert_allclose(_onnx_scores(folder, images),
                             Classifier(f32, list("abcde"), image_size=64).predict(images),
                             atol=1e-4, rtol=0)


def test_a_model_the_mapping_does_not_cover_is_one_error_and_writes_nothing(tmp_path):
  model = _model()
  model.backbone.pooling = None  # a feature map, not a vector
  with pytest.raises(UserError, match="ONNX export: model.pooling=None gives a feature map"):
    Classifier(model, list("abcde"), image_size=64).export(tmp_path / "o", format="onnx")
  assert not (tmp_path / "o").exists()
  from mlc_jax.models import resnet

  class Unmapped(resnet.ResNet):  # a family the graph has no walker for
    pass
  net = Unmapped("resnet50", width=1 / 16, image_size=64, include_top=True, num_classes=5)
  with pytest.raises(UserError, match="--format=onnx: the ONNX graph has no mapping for the "
                     r"backbone Unmapped \(resnet50\): export it with --format=stablehlo"):
    Classifier(net, list("abcde"), image_size=64).export(tmp_path / "o", format="onnx")
  assert not (tmp_path / "o").exists()
  with pytest.raises(UserError, match="--format='tflite': export writes one of stablehlo, onnx"):
    Classifier(_model(), list("abcde"), image_size=64).export(tmp_path / "o", format="tflite")
