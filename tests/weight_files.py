"""Test-side writers of VGG weight files in the layouts the world uses, written from the layouts'
definitions (not from mlc_jax's readers): legacy Keras HDF5, torchvision and timm safetensors.

Weights come in as Keras lists in Keras order: {layer: [kernel HWIO or (in, out), bias]}, batch norm
{block{b}_bn{i}: [gamma, beta, moving_mean, moving_variance]}; fc1's rows in H, W, C order.
"""
import h5py
import numpy as np
from safetensors.numpy import save_file

BLOCKS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3),
          "vgg19": (2, 2, 4, 4, 4)}


def random_weights(arch, width, *, top=False, bn=False, image_size=224, classes=1000, seed=0):
  """He-scaled random weights with random biases for a VGG of `width` (Keras lists, Keras order)."""
  rng = np.random.default_rng(seed)
  chans = [max(1, int(round(c * width))) for c in (64, 128, 256, 512, 512)]
  weights, cin = {}, 3
  for b, n in enumerate(BLOCKS[arch], 1):
    for i in range(1, n + 1):
      cout = chans[b - 1]
      weights[f"block{b}_conv{i}"] = [
          rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32),
          rng.normal(0, 0.1, cout).astype(np.float32)]
      if bn:
        weights[f"block{b}_bn{i}"] = [rng.uniform(0.5, 1.5, cout).astype(np.float32),
                                      rng.normal(0, 0.1, cout).astype(np.float32),
                                      rng.normal(0, 0.5, cout).astype(np.float32),
                                      rng.uniform(0.5, 2.0, cout).astype(np.float32)]
      cin = cout
  if top:
    side, units = image_size // 32, max(1, int(round(4096 * width)))
    for name, fin, fout in (("fc1", side * side * cin, units), ("fc2", units, units),
                            ("predictions", units, classes)):
      weights[name] = [rng.normal(0, np.sqrt(2 / fin), (fin, fout)).astype(np.float32),
                       rng.normal(0, 0.1, fout).astype(np.float32)]
  return weights


def write_keras_h5(path, weights, *, attrs="bytes", naming="legacy", drop=(), extra_layers=True):
  """Legacy Keras HDF5: root attr layer_names, per layer group attr weight_names and datasets.

  attrs: 'bytes' (Keras 2.x files) or 'str'. naming: 'legacy' (block1_conv1_W_1:0, the 2016 files)
  or 'keras2' (block1_conv1/kernel:0, nested groups). `drop` leaves layers out.
  """
  suffixes = {"legacy": ("_W_1:0", "_b_1:0", "_running_mean:0", "_running_std:0"),
              "keras2": ("/kernel:0", "/bias:0", "/moving_mean:0", "/moving_variance:0")}[naming]
  layer_names = (["input_1"] if extra_layers else []) + [n for n in weights if n not in drop]
  if extra_layers:
    layer_names.insert(3, "block1_pool")
  encode = (lambda xs: np.array([x.encode() for x in xs])) if attrs == "bytes" else list
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = encode(layer_names)
    f.attrs["backend"] = "tensorflow"
    for layer in layer_names:
      group = f.create_group(layer)
      arrays = weights.get(layer, [])
      if "_bn" in layer:
        names = [f"{layer}_gamma:0", f"{layer}_beta:0", layer + suffixes[2], layer + suffixes[3]]
      else:
        names = [layer + s for s in suffixes[:2]][:len(arrays)]
      group.attrs["weight_names"] = encode(names)
      for name, array in zip(names, arrays):
        group.create_dataset(name, data=array)


def torchvision_conv_indices(arch, bn):
  """Index in torchvision's `features` Sequential of each conv (conv, [bn], relu; pool per block)."""
  indices, i = [], 0
  for n in BLOCKS[arch]:
    for _ in range(n):
      indices.append(i)
      i += 3 if bn else 2
    i += 1
  return indices


def _conv_and_bn(weights, arch):
  names = [f"block{b}_conv{i}" for b, n in enumerate(BLOCKS[arch], 1) for i in range(1, n + 1)]
  bn = any("_bn" in n for n in weights)
  tensors = {}
  for name, idx in zip(names, torchvision_conv_indices(arch, bn)):
    kernel, bias = weights[name]
    tensors[f"features.{idx}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # OIHW
    tensors[f"features.{idx}.bias"] = bias
    if bn:
      gamma, beta, mean, var = weights[name.replace("conv", "bn")]
      p = f"features.{idx + 1}."
      tensors.update({p + "weight": gamma, p + "bias": beta, p + "running_mean": mean,
                      p + "running_var": var, p + "num_batches_tracked": np.array(7, np.int64)})
  return tensors, weights[names[-1]][0].shape[-1]


def _fc1_oihw(kernel, channels):
  """fc1 kernel (h*w*C rows in HWC order, out) -> (out, C, h, w) as torch indexes it."""
  side = int(round((kernel.shape[0] / channels) ** 0.5))
  return kernel.reshape(side, side, channels, -1).transpose(3, 2, 0, 1)


def write_torchvision(path, weights, arch):
  """torchvision's state_dict layout: features.{i}.*, classifier.{0,3,6}.* with fc1 in CHW order."""
  tensors, channels = _conv_and_bn(weights, arch)
  for layer, idx in (("fc1", 0), ("fc2", 3), ("predictions", 6)):
    if layer in weights:
      kernel, bias = weights[layer]
      w = _fc1_oihw(kernel, channels).reshape(kernel.shape[1], -1) if layer == "fc1" else kernel.T
      tensors[f"classifier.{idx}.weight"] = np.ascontiguousarray(w)
      tensors[f"classifier.{idx}.bias"] = bias
  save_file(tensors, str(path))


def write_timm(path, weights, arch):
  """timm's layout: features.{i}.*, pre_logits.fc1 (7x7 conv), pre_logits.fc2 (1x1 conv), head.fc."""
  tensors, channels = _conv_and_bn(weights, arch)
  k1, b1 = weights["fc1"]
  k2, b2 = weights["fc2"]
  kp, bp = weights["predictions"]
  tensors.update({
      "pre_logits.fc1.weight": np.ascontiguousarray(_fc1_oihw(k1, channels)),
      "pre_logits.fc1.bias": b1,
      "pre_logits.fc2.weight": np.ascontiguousarray(k2.T[:, :, None, None]),
      "pre_logits.fc2.bias": b2,
      "head.fc.weight": np.ascontiguousarray(kp.T), "head.fc.bias": bp})
  save_file(tensors, str(path))


def torch_preprocess(images):
  """numpy reference of torchvision's transform: /255, then ImageNet mean/std, RGB."""
  x = images.astype(np.float64) / 255.0
  return ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)


def rel_err(a, b):
  """max |a - b| / max |b|: relative error on the scale of the reference."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
