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
           size=64, convention="caffe", hidden=(256,), dtype="float32", classes=5):
  c = default_config()
  c.model.arch, c.model.batch_norm, c.model.pooling = arch, batch_norm, pooling
  c.model.include_top, c.model.width, c.model.preprocessing = include_top, width, convention
  c.image_size, c.head.hidden, c.dtype = size, hidden, dtype
  model = models.build_model(c, classes)
  rng = np.random.default_rng(1)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):  # statistics that matter
    shape = var.get_value().shape
    var.set_value(np.asarray(rng.uniform(0.5, 2.0, shape) if path[-1] == "var"
                             else rng.normal(0, 0.5, shape), np.float32))
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
  with pytest.raises(UserError, match="--format='tflite': export writes one of stablehlo, onnx"):
    Classifier(_model(), list("abcde"), image_size=64).export(tmp_path / "o", format="tflite")
