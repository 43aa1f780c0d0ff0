"""VGG weight files: read Keras HDF5 and torchvision/timm safetensors files, fetch the Keras files,
and write Keras HDF5 files (`write_keras_h5`, what `--mode=export --format=keras_h5` writes).

Readers return {keras_layer_name: {param: float32 numpy array in our layout}}: conv kernels HWIO,
dense kernels (in, out) with fc1's rows in H, W, C flatten order, batch norm scale/bias/mean/var.
Neither Keras nor torch is needed at run time. A file mlc_jax writes also says, in root attributes
Keras ignores (`file_attrs`), its preprocessing convention, labels and where it came from.
"""
import hashlib
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request

import h5py
import jax.numpy as jnp
import numpy as np
from absl import logging
from safetensors import SafetensorError, safe_open

from mlc_jax.errors import UserError
from mlc_jax.models import backbone as backbone_lib, vgg as vgg_lib

KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/{arch}/{name}"
# md5 of each official file, as keras.applications publishes them (file_hash=...).
KERAS_MD5 = {
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5": "64373286793e3c8b2b4e3219cbf3544b",
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": "6d6bbae143d832006294945121d1f1fc",
    "vgg19_weights_tf_dim_ordering_tf_kernels.h5": "cbe5617147190e668d6c5d5026f83318",
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5": "253f8cb515780f3b799900260a226db6",
    "resnet50_weights_tf_dim_ordering_tf_kernels.h5": "2cb95161c43110f7111970584f804107",
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet101_weights_tf_dim_ordering_tf_kernels.h5": "f1aeb4b969a6efcfb50fad2f0c20cfc5",
    "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5": "88cf7a10940856eca736dc7b7e228a21",
}
KERAS_DIRS = {"resnet50": "resnet", "resnet101": "resnet"}  # keras-applications/<dir>/<file>
DEFAULT_CACHE = "~/.cache/mlc_jax"
CONV_PARAMS = ("kernel", "bias")
BN_PARAMS = ("scale", "bias", "mean", "var")  # Keras order: gamma, beta, moving mean, moving variance
KERNEL_ONLY = ("kernel",)
BIAS_FREE = re.compile(r"block\d_(stem|head|mb\d+_(expand|dw|project))_conv")  # EfficientNet-Lite


def keras_file_name(arch, include_top):
  """File name of the official Keras ImageNet weights for `arch` with or without the top."""
  if arch not in ("vgg16", "vgg19"):
    raise UserError(f"Keras publishes ImageNet weights for vgg16 and vgg19 only, not {arch}; "
                    "set model.weights to a torchvision safetensors file (see BUILD.md)")
  return f"{arch}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"


def convention_for(weights_spec):
  """Preprocessing convention of a weights spec: 'imagenet'/.h5 -> caffe, .safetensors and
  'torchvision-vgg16' -> torch, 'efficientnet-lite0' -> tf, '' -> unit."""
  spec = str(weights_spec or "")
  if not spec:
    return "unit"
  if spec == "torchvision-vgg16":  # models.sdist_weights.NAME (that module imports this one)
    return "torch"
  if spec == "efficientnet-lite0":  # models.lite_weights.NAME
    return "tf"
  if spec.lower().endswith((".h5", ".hdf5")):
    return file_attrs(spec).get("preprocessing", "caffe")  # mlc_jax's own files say theirs
  if spec == "imagenet":
    return "caffe"
  if spec.lower().endswith(".safetensors"):
    return "torch"
  raise UserError(f"model.weights={spec!r}: give 'imagenet', 'torchvision-vgg16', '' (from "
                  "scratch), a Keras .h5 file or a .safetensors file (torchvision or timm "
                  "layout); or set model.preprocessing")


ATTR_PREFIX = "mlc_jax_"
KERAS_PARAMS = {CONV_PARAMS: ("kernel", "bias"), KERNEL_ONLY: ("kernel",),
                BN_PARAMS: ("gamma", "beta", "moving_mean", "moving_variance")}


def write_keras_h5(path, layers, attrs=None):
  """{layer: {param: array}} (our layout, in network order) -> a legacy Keras HDF5 weights file.

  Keras's `model.load_weights(path)` (layers in the same order) and `read_keras_h5` both read it;
  attrs ({name: str}) become root attributes 'mlc_jax_NAME' (see file_attrs). Written to a
  temporary file and renamed, so a reader never sees half a file.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with h5py.File(tmp, "w") as f:
    f.attrs["layer_names"] = np.array([name.encode() for name in layers])
    f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.15.0"
    for key, value in (attrs or {}).items():
      f.attrs[ATTR_PREFIX + key] = str(value).encode()
    for name, params in layers.items():
      ours = param_names(name)
      names = [f"{name}/{k}:0" for k in KERAS_PARAMS[ours]]
      group = f.create_group(name)
      group.attrs["weight_names"] = np.array([n.encode() for n in names])
      for n, p in zip(names, ours):
        group.create_dataset(n, data=np.asarray(params[p], np.float32))
  os.replace(tmp, path)
  return path


def file_attrs(path):
  """{name: str} of the 'mlc_jax_NAME' root attributes of an HDF5 file ({} for any other file)."""
  path = str(path)
  if not (os.path.isfile(path) and h5py.is_hdf5(path)):
    return {}
  with h5py.File(path, "r") as f:
    return {k[len(ATTR_PREFIX):]: _str(v) for k, v in f.attrs.items() if k.startswith(ATTR_PREFIX)}


def _str(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _names(attr):
  return [_str(v) for v in np.atleast_1d(attr)]


def param_names(layer):
  """The parameters of a weight-bearing layer, in Keras order: batch norms (block3_bn1,
  block1_stem_bn), EfficientNet-Lite's bias-free convolutions (kernel only), other convs/denses."""
  if re.fullmatch(r"block\d_(bn\d+|\w+_bn)", layer):
    return BN_PARAMS
  return KERNEL_ONLY if BIAS_FREE.fullmatch(layer) else CONV_PARAMS


def read_keras_h5_arrays(path):
  """Legacy Keras HDF5 weights (root attr layer_names, per-layer weight_names) -> {layer: [arrays
  in the file's order]} (float32), layers without weights left out; any family's reader maps them."""
  path = str(path)
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise UserError(f"weights file {path} is not a readable HDF5 file ({e}); give a Keras "
                    ".h5 weights file or a .safetensors file") from None
  with f:
    root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    if "layer_names" not in root.attrs:
      raise UserError(f"weights file {path} is HDF5 but not in the Keras weights layout (no "
                      "'layer_names' attribute); save it with Keras's legacy .h5 format")
    arrays = {}
    for layer in _names(root.attrs["layer_names"]):
      group = root[layer]
      names = _names(group.attrs.get("weight_names", []))
      if not names:
        continue  # input, pooling and flatten layers carry no weights
      try:
        arrays[layer] = [np.asarray(group[n], np.float32) for n in names]
      except KeyError as e:
        raise UserError(f"weights file {path}: layer {layer} lists {e} but does not hold it; "
                        "the file is damaged, download it again") from None
  return arrays


def read_keras_h5(path):
  """A VGG's legacy Keras HDF5 weights -> our layout."""
  weights = {}
  for layer, arrays in read_keras_h5_arrays(path).items():
    params = param_names(layer)
    if len(arrays) != len(params):
      raise UserError(f"weights file {path}: layer {layer} holds {len(arrays)} arrays, expected "
                      f"{len(params)} ({', '.join(params)})")
    weights[layer] = dict(zip(params, arrays))
  return weights


def _conv_layer_names(num_convs, path):
  for arch in vgg_lib.BLOCKS:
    names = vgg_lib.conv_names(arch)
    if len(names) == num_convs:
      return names
  raise UserError(f"weights file {path} holds {num_convs} convolutions; a VGG has 8, 10, 13 or 16")


def _hwc_rows(weight, channels, path):
  """torch Linear weight (out, C*h*w) in CHW flatten order -> our kernel (h*w*C, out) in HWC order."""
  out, inputs = weight.shape
  side = int(round((inputs / channels) ** 0.5))
  if side * side * channels != inputs:
    raise UserError(f"weights file {path}: fc1 takes {inputs} inputs, not a square map of "
                    f"{channels} channels")
  return weight.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(inputs, out)


def read_safetensors(path):
  """torchvision (features.*, classifier.*) or timm (pre_logits.*, head.fc) safetensors -> our layout."""
  path = str(path)
  try:
    with safe_open(path, framework="np") as f:
      tensors = {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise UserError(f"weights file {path} is not a readable safetensors file ({e}); save float32 "
                    "tensors with safetensors (see BUILD.md)") from None
  indices = sorted({int(m.group(1)) for k in tensors if (m := re.fullmatch(r"features\.(\d+)\.weight", k))})
  convs = [i for i in indices if tensors[f"features.{i}.weight"].ndim == 4]
  if not convs:
    raise UserError(f"weights file {path} has no 'features.N.weight' convolutions: it is not a "
                    "torchvision or timm VGG")
  names = _conv_layer_names(len(convs), path)
  weights = {}
  for name, i in zip(names, convs):
    weights[name] = {"kernel": tensors[f"features.{i}.weight"].transpose(2, 3, 1, 0),
                     "bias": tensors[f"features.{i}.bias"]}
    if f"features.{i + 1}.running_mean" in tensors:
      bn = f"features.{i + 1}."
      weights[name.replace("conv", "bn")] = {
          "scale": tensors[bn + "weight"], "bias": tensors[bn + "bias"],
          "mean": tensors[bn + "running_mean"], "var": tensors[bn + "running_var"]}
  channels = weights[names[-1]]["kernel"].shape[-1]
  if "classifier.0.weight" in tensors:  # torchvision
    top = {"fc1": "classifier.0", "fc2": "classifier.3", "predictions": "classifier.6"}
    for layer, key in top.items():
      if key + ".weight" in tensors:
        w = tensors[key + ".weight"]
        kernel = _hwc_rows(w, channels, path) if layer == "fc1" else w.T
        weights[layer] = {"kernel": kernel, "bias": tensors[key + ".bias"]}
  elif "pre_logits.fc1.weight" in tensors:  # timm: fc1 a 7x7 conv (OIHW), fc2 a 1x1 conv
    w = tensors["pre_logits.fc1.weight"]
    weights["fc1"] = {"kernel": w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]),
                      "bias": tensors["pre_logits.fc1.bias"]}
    w = tensors["pre_logits.fc2.weight"]
    weights["fc2"] = {"kernel": w.reshape(w.shape[0], -1).T, "bias": tensors["pre_logits.fc2.bias"]}
    if "head.fc.weight" in tensors:
      weights["predictions"] = {"kernel": tensors["head.fc.weight"].T, "bias": tensors["head.fc.bias"]}
  return weights


def read_weights(path):
  """Any supported weights file -> {layer: {param: array}}; UserError naming the file otherwise."""
  path = str(path)
  if not os.path.isfile(path):
    raise UserError(f"weights file {path} does not exist; give an existing file, 'imagenet' or ''")
  if h5py.is_hdf5(path):
    return read_keras_h5(path)
  if path.lower().endswith((".h5", ".hdf5")):
    raise UserError(f"weights file {path} is not an HDF5 file; give a Keras .h5 weights file "
                    "(see BUILD.md), e.g. download it again")
  if path.lower().endswith(".safetensors"):
    return read_safetensors(path)
  raise UserError(f"weights file {path} is neither an HDF5 file (Keras .h5) nor a .safetensors "
                  "file; give one of those (see BUILD.md)")


def describe(weights):
  """(arch, batch_norm, has_top) of a weights dict, from its layer names alone."""
  counts = [sum(1 for n in weights if re.fullmatch(rf"block{b}_conv\d+", n)) for b in range(1, 6)]
  arch = next((a for a, blocks in vgg_lib.BLOCKS.items() if tuple(counts) == blocks), None)
  return arch, any("_bn" in n for n in weights), "fc1" in weights


def _expected(module):
  """{layer: {param: shape}} of the weight-bearing layers of a VGG (concrete or abstract)."""
  return {layer: {p: tuple(getattr(getattr(module, layer), p).get_value().shape)
                  for p in param_names(layer)}
          for layer in module.layer_names}


def load_into(module, path, weights=None):
  """Reads weights file `path` into VGG `module` in place (also an nnx.eval_shape one); returns it.

  `weights` (read_weights(path)) saves a second read when the caller already has them.
  Layers of the file the model lacks are ignored only for the top (a headless backbone from a full
  file) and for the conv blocks above a tapped backbone's last (model.blocks); any other
  difference raises one UserError naming the file, layer, expected and found shape.
  """
  weights = read_weights(path) if weights is None else weights
  expected = _expected(module)
  problems = []
  above = getattr(module, "blocks", 5)  # a backbone tapped below block 5 ignores the blocks above
  extra = [n for n in weights if n not in expected and n not in ("fc1", "fc2", "predictions")
           and not (backbone_lib.block_of(n) or 0) > above]
  if extra:
    arch, bn, _ = describe(weights)
    kind = f"{arch}{'_bn' if bn else ''}" if arch else "another network"
    vgg_bn = getattr(module, "batch_norm", False) and module.arch.startswith("vgg")
    mine = f"{module.arch}{'_bn' if vgg_bn else ''}"
    problems.append(f"it holds layers {', '.join(extra[:4])} that a {mine} lacks: the file is for "
                    f"{kind}; set model.arch/model.batch_norm to match it")
  for layer, params in expected.items():
    if layer not in weights:
      problems.append(f"layer {layer}: expected {params}, found no such layer")
      continue
    for p, shape in params.items():
      found = weights[layer].get(p)
      if found is None or tuple(found.shape) != shape:
        found_shape = "nothing" if found is None else tuple(found.shape)
        problems.append(f"layer {layer} {p}: expected shape {shape}, found {found_shape}")
  if problems:
    hint = (" (model.width, model.arch, model.batch_norm, model.include_top and image_size=224 "
            "for the top must match the file)")
    raise UserError(f"weights file {path} does not fit the model: " + "; ".join(problems[:5])
                    + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "") + hint)
  for layer, params in expected.items():
    for p in params:
      getattr(getattr(module, layer), p).set_value(jnp.asarray(weights[layer][p], jnp.float32))
  return module


def _digests(path):
  sha, md5 = hashlib.sha256(), hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      sha.update(chunk)
      md5.update(chunk)
  return sha.hexdigest(), md5.hexdigest()


def fetch(name, cache_dir=None, url=None, sha256=None, md5=None):
  """Path of weights file `name` in `cache_dir`, downloading it first when missing.

  Known Keras names get their official URL and md5. The download goes to a temporary file beside
  the target and is renamed only after the hash matches, so the cache never holds a partial file.
  """
  cache = pathlib.Path(os.path.expanduser(cache_dir or DEFAULT_CACHE))
  target = cache / name
  if target.is_file():
    return str(target)  # only a verified download is ever renamed to this path
  if url is None:
    if name not in KERAS_MD5:
      raise UserError(f"no download URL known for weights file {name}; put it in {cache}")
    arch = name.split("_")[0]
    url = KERAS_URL.format(arch=KERAS_DIRS.get(arch, arch), name=name)
  if md5 is None and sha256 is None:
    md5 = KERAS_MD5.get(name)
  if md5 is None and sha256 is None:
    raise UserError(f"no sha256 or md5 given for {url}; a download needs a hash to check")
  try:
    cache.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the weights cache {cache} ({e}); set model.cache_dir") from None
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache)
  try:
    logging.info("downloading %s to %s", url, target)
    try:
      with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          out.write(chunk)
    except (urllib.error.URLError, OSError) as e:
      raise UserError(f"cannot download {url} ({e}); download it by hand to {target}, or set "
                      "model.weights to a local file") from None
    got_sha, got_md5 = _digests(tmp)
    for kind, want, got in (("sha256", sha256, got_sha), ("md5", md5, got_md5)):
      if want and want.lower() != got:
        raise UserError(f"downloaded {url} has {kind} {got}, expected {want}: the file is damaged "
                        f"or not the published one and was not kept; retry, or place the right "
                        f"file at {target}")
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return str(target)
