"""ResNet weight files: keras.applications' .h5 (layout 'keras') and torchvision state_dicts saved as
safetensors (layout 'torchvision'), read into a models.resnet.ResNet without Keras or torch.

Names: Keras conv1_conv/conv1_bn -> block1_conv/block1_bn; conv{b}_block{u}_{k}_conv/_bn ->
block{b}_unit{u}_conv{k}/_bn{k} (k = 0, the shortcut: block{b}_unit{u}_downsample_conv/_bn);
torchvision conv1/bn1 -> block1_*, layer{L}.{i}.conv{k}/bn{k}/downsample.{0,1} ->
block{L+1}_unit{i+1}_*; fc and Keras's predictions -> predictions. Conv kernels HWIO (torch's OIHW
transposed), dense kernel (in, out); num_batches_tracked is ignored.
"""
import re

import h5py
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from mlc_jax.errors import UserError
from mlc_jax.models import backbone as backbone_lib, resnet, weights as weights_lib

CONV = ("kernel", "bias")
BN = ("scale", "bias", "mean", "var")  # Keras order: gamma, beta, moving mean, moving variance
TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
KEYS = "model.arch, model.resnet_layout and model.width"


def _keras_layer(name):
  """Our name of a keras.applications ResNet layer (None for a name of no ResNet)."""
  if name in ("conv1_conv", "conv1_bn"):
    return "block1_" + name[6:]
  if name == "predictions":
    return name
  m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
  if not m:
    return None
  b, u, k, kind = m.groups()
  return f"block{b}_unit{u}_" + (f"downsample_{kind}" if k == "0" else f"{kind}{k}")


def read_keras(path):
  """keras.applications ResNet50/101 .h5 (top or notop) -> ({layer: {param: array}}, 'keras')."""
  out = {}
  for name, arrays in weights_lib.read_keras_h5_arrays(path).items():
    ours = _keras_layer(name)
    if ours is None:
      ours = name if re.fullmatch(r"block\d_\w+", name) else None  # an mlc_jax-written file
    if ours is None:
      raise UserError(f"weights file {path} holds layer {name}, which no Keras ResNet has: it is "
                      f"not a keras.applications ResNet50/101 file; set {KEYS} to match it")
    params = BN if resnet.is_bn(ours) else CONV
    if len(arrays) not in ((4,) if params is BN else (1, 2)):
      raise UserError(f"weights file {path}: layer {name} holds {len(arrays)} arrays, expected "
                      f"{', '.join(params)}; set {KEYS} to match it")
    out[ours] = dict(zip(params, arrays))
  return out, ("keras" if any("bias" in p for n, p in out.items() if "conv" in n) else "torchvision")


def _torch_layer(key):
  """(our layer, our param) of a torchvision ResNet state_dict key; None for num_batches_tracked
  and keys of no ResNet."""
  module, _, param = key.rpartition(".")
  m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)", module)
  if m:
    stage, unit, part = m.groups()
    part = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(part, part)
    layer = f"block{int(stage) + 1}_unit{int(unit) + 1}_{part}"
  else:
    layer = {"conv1": "block1_conv", "bn1": "block1_bn", "fc": "predictions"}.get(module)
  if layer is None or param == "num_batches_tracked":
    return None
  if resnet.is_bn(layer):
    return layer, TORCH_BN.get(param)
  return layer, {"weight": "kernel", "bias": "bias"}.get(param)


def read_torchvision(path):
  """torchvision ResNet state_dict in safetensors -> ({layer: {param: array}}, 'torchvision'|'keras')."""
  try:
    with safe_open(str(path), framework="np") as f:
      tensors = {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise UserError(f"weights file {path} is not a readable safetensors file ({e}); save float32 "
                    "tensors with safetensors (see BUILD.md)") from None
  out = {}
  for key, value in tensors.items():
    if key.endswith("num_batches_tracked"):
      continue
    where = _torch_layer(key)
    if where is None or where[1] is None:
      raise UserError(f"weights file {path} holds {key}, which no torchvision ResNet has: it is not "
                      f"a torchvision resnet50/101 state_dict; set {KEYS} to match it")
    layer, param = where
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif layer == "predictions" and param == "kernel":
      value = value.T  # (out, in) -> (in, out)
    out.setdefault(layer, {})[param] = value
  has_bias = any("bias" in p for n, p in out.items() if "conv" in n)
  return out, "keras" if has_bias else "torchvision"


def read(path):
  """Any ResNet weights file -> ({layer: {param: array}}, the layout its convolutions say)."""
  path = str(path)
  if h5py.is_hdf5(path):
    found, layout = read_keras(path)
    return found, weights_lib.file_attrs(path).get("resnet_layout", layout)
  if path.lower().endswith(".safetensors"):
    return read_torchvision(path)
  weights_lib.read_weights(path)  # the one-line error for a missing, non-HDF5 or other file
  raise UserError(f"weights file {path} is not a ResNet weights file; give a Keras .h5 or a "
                  "torchvision .safetensors file")


def describe(found):
  """(arch or None, width or None) of a ResNet's weights: units per stage and the stem's width."""
  depths = tuple(len({n.split("_")[1] for n in found if n.startswith(f"block{b}_unit")})
                 for b in range(2, 6))
  arch = next((a for a, d in resnet.DEPTHS.items() if d == depths), None)
  stem = found.get("block1_conv", {}).get("kernel")
  return arch, None if stem is None else stem.shape[-1] / resnet.STEM


def _expected(module):
  """{layer: {param: shape}} of a ResNet (concrete or abstract)."""
  out = {}
  for layer in module.layer_names:
    params = BN if resnet.is_bn(layer) else CONV
    out[layer] = {p: tuple(getattr(getattr(module, layer), p).get_value().shape) for p in params
                  if getattr(getattr(module, layer), p, None) is not None}
  return out


def load_into(module, path, found=None):
  """Reads ResNet weights file `path` into `module` in place (also an nnx.eval_shape one); returns it.

  The file's top is ignored by a headless model, and its stages above a tapped model's last
  (model.blocks); any other difference (layout, arch, width, a missing layer) raises one UserError
  naming the file and the keys to set.
  """
  found, layout = read(path) if found is None else found
  arch, width = describe(found)
  problems = []
  if layout != module.layout or arch != module.arch or (
      width is not None and resnet.scaled(resnet.STEM, module.width) != round(width * resnet.STEM)):
    have = f"a {layout}-layout {arch or 'network of no known ResNet depth'}" + (
        f" at width {width:g}" if width else "")
    problems.append(f"it holds {have}, the model is a {module.layout}-layout {module.arch} at "
                    f"width {module.width:g}")
  expected = _expected(module)
  if not problems:
    for layer, params in expected.items():
      if layer not in found:
        what = ("no ImageNet top (predictions): set model.include_top=False or give the file "
                "with the top" if layer == "predictions" else f"no layer {layer}")
        problems.append(f"it has {what}")
        continue
      for p, shape in params.items():
        have = found[layer].get(p)
        if have is None or tuple(have.shape) != shape:
          problems.append(f"layer {layer} {p}: expected shape {shape}, found "
                          f"{'nothing' if have is None else tuple(have.shape)}")
    extra = [n for n in found if n not in expected and n != "predictions"
             and not (backbone_lib.block_of(n) or 0) > module.blocks]
    if extra:
      problems.append(f"it holds layers {', '.join(extra[:4])} that the model lacks")
  if problems:
    top_only = problems == [p for p in problems if "ImageNet top" in p]
    raise UserError(f"weights file {path} does not fit the model: " + "; ".join(problems[:4])
                    + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
                    + ("" if top_only else f"; set {KEYS} (and model.include_top) to match the file"))
  for layer, params in expected.items():
    for p in params:
      getattr(getattr(module, layer), p).set_value(jnp.asarray(found[layer][p], jnp.float32))
  return module


def imagenet_file(config):
  """File name of keras.applications' ImageNet weights for config.model (layout 'keras' only)."""
  m = config.model
  if m.get("resnet_layout", "torchvision") != "keras":
    raise UserError(f"model.weights='imagenet' for {m.arch} is keras.applications' file (ResNet v1): "
                    "set model.resnet_layout='keras', or keep 'torchvision' and set model.weights "
                    "to a torchvision state_dict saved as .safetensors")
  return f"{m.arch}_weights_tf_dim_ordering_tf_kernels{'' if m.include_top else '_notop'}.h5"
