"""Classifier and load_imagenet on a narrow VGG16 file (Keras parity at full width is in test_imagenet)."""
import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import mlc_jax
import weight_files as wf
from conftest import default_config
from mlc_jax.inference.classifier import Classifier, load_imagenet
from mlc_jax.data import pixels as images_lib
from mlc_jax.errors import UserError
from mlc_jax.models import build_model, imagenet, load_backbone_weights
from mlc_jax.models import weights as weights_lib

WIDTH = 1 / 16
TOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
  """A width-1/16 VGG16 with the 1000-class top as a Keras file, and its classifier."""
  path = tmp_path_factory.mktemp("weights") / TOP_FILE
  weights = wf.random_weights("vgg16", WIDTH, top=True, seed=11)
  weights["predictions"] = [w * 0.01 for w in weights["predictions"]]  # softmax neither flat nor one-hot
  wf.write_keras_h5(path, weights)
  return path, load_imagenet(path)


def test_class_list_is_keras_order():
  assert len(imagenet.IMAGENET_CLASSES) == 1000 == len(set(imagenet.IMAGENET_CLASSES))
  assert imagenet.IMAGENET_WNIDS == sorted(imagenet.IMAGENET_WNIDS)  # Keras indexes sorted wnids
  assert imagenet.IMAGENET_WNIDS[0] == "n01440764" and imagenet.IMAGENET_CLASSES[0] == "tench"
  assert imagenet.IMAGENET_CLASSES[948] == "Granny Smith"
  assert imagenet.IMAGENET_WNIDS[999] == "n15075141"


def test_load_imagenet_predicts_softmax_over_imagenet(narrow):
  _, classifier = narrow
  assert mlc_jax.load_imagenet is load_imagenet
  assert classifier.labels == imagenet.IMAGENET_CLASSES and classifier.activation == "softmax"
  assert classifier.model.width == WIDTH and classifier.model.preprocessing == "caffe"
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
  probs = classifier.predict(images, batch_size=2)  # 3 batches, the last one padded
  assert probs.shape == (5, 1000) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  np.testing.assert_allclose(probs, classifier.predict(images), rtol=1e-5, atol=1e-7)
  assert 0.1 < probs.max() < 0.9  # not flat, not saturated: the order of the classes matters below
  top = classifier.top_k(images, k=3)
  for row, p in zip(top, probs):
    order = np.argsort(-p)[:3]
    assert [label for label, _ in row] == [classifier.labels[j] for j in order]
    np.testing.assert_allclose([q for _, q in row], p[order], rtol=1e-5)
  labels = classifier.predict_labels(images, threshold=probs.max() - 1e-6)
  assert sum(map(len, labels)) == 1


def test_paths_pil_and_other_sizes_get_the_pipeline_pixels(narrow, tmp_path):
  _, classifier = narrow
  rng = np.random.default_rng(1)
  big = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
  exact = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
  Image.fromarray(big).save(tmp_path / "big.png")
  expected = classifier.predict(np.stack([images_lib.load(big, 224), exact]))
  np.testing.assert_allclose(classifier.predict([tmp_path / "big.png", exact]), expected,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(classifier.predict([Image.fromarray(big), Image.fromarray(exact)]),
                             expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(classifier.predict(str(tmp_path / "big.png")), expected[:1],
                             rtol=1e-5, atol=1e-7)
  with pytest.raises(UserError, match="missing.jpg does not exist"):
    classifier.predict([tmp_path / "missing.jpg"])


def test_load_imagenet_from_cache_and_bad_files(narrow, tmp_path):
  path, classifier = narrow
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / TOP_FILE).write_bytes(path.read_bytes())  # as if fetched before: no download
  images = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
  cached = load_imagenet("imagenet", cache_dir=cache)
  np.testing.assert_array_equal(cached.predict(images), classifier.predict(images))
  config = default_config()  # include_top for training: fc1/fc2 from the file, no predictions layer
  config.image_size, config.head.hidden = 224, ()
  config.model.weights, config.model.width, config.model.include_top = str(path), WIDTH, True
  model = build_model(config, 4)
  load_backbone_weights(model.backbone, config)
  assert not hasattr(model.backbone, "predictions") and model.head.predictions.kernel.shape == (256, 4)
  np.testing.assert_array_equal(model.backbone.fc2.kernel[...], classifier.model.fc2.kernel[...])
  notop = tmp_path / "notop.h5"
  wf.write_keras_h5(notop, wf.random_weights("vgg16", WIDTH))
  with pytest.raises(UserError, match=r"notop\.h5 has no ImageNet top"):
    load_imagenet(notop)
  few = tmp_path / "ten.h5"
  wf.write_keras_h5(few, wf.random_weights("vgg16", WIDTH, top=True, classes=10))
  with pytest.raises(UserError, match=r"ten\.h5: layer predictions: expected 1000 .* found 10"):
    load_imagenet(few)


def test_multilabel_classifier_uses_sigmoid_and_thresholds():
  config = default_config()
  config.image_size, config.model.weights, config.model.width, config.head.hidden = 32, "", WIDTH, ()
  model = build_model(config, 3)
  labels = ["cat", "dog", "car"]
  classifier = Classifier(model, labels, image_size=32, thresholds=[0.0, 1.1, 0.5])
  images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  graphdef, state = nnx.split(model)
  logits = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, images))
  np.testing.assert_allclose(classifier.predict(images), 1 / (1 + np.exp(-logits)), rtol=1e-5)
  assert classifier.predict_labels(images)[0][0] == "cat"
  assert all("dog" not in row for row in classifier.predict_labels(images))
  assert classifier.predict_labels(images, threshold=0.0) == [labels, labels]
  assert set(classifier.params) >= {"backbone/block1_conv1/kernel", "head/predictions/kernel"}
  with pytest.raises(UserError, match="activation='relu'"):
    Classifier(model, labels, image_size=32, activation="relu")
