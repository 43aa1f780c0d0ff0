"""Each backbone family's layers as ONNX nodes (mlc_jax.inference.onnx_graph builds the rest).

A walker takes the graph (onnx_graph._Graph: const/op), the preprocessed NCHW input and the
backbone, and returns its last map (blocks 1..`blocks`), computed as the family's `features` in
inference mode: every batch norm with its running statistics and its own epsilon; convolutions
with the layer's own strides, groups, bias (if any) and padding, a 'SAME' padding written out as
explicit pads from the input side exactly as lax (TensorFlow) places them, the odd pixel after.
- VGG: Conv 3x3 pad 1 [-> BatchNormalization] -> Relu per conv, MaxPool 2x2/2 per block.
- ResNet (both layouts): the stem Conv 7x7/2 -> BN -> Relu, MaxPool 3x3/2 pads 1 (torch's and the
  model's -inf padding: ONNX pads a MaxPool with -inf), bottleneck units Conv 1x1 -> BN -> Relu ->
  Conv 3x3 -> BN -> Relu -> Conv 1x1 -> BN, the first unit's shortcut Conv 1x1 -> BN, Add, Relu.
- EfficientNet-Lite: Conv with group=C for the depthwise convolutions, Clip(0, 6) for ReLU6,
  the residual Add where stride is 1 and the width unchanged, the 1280 head conv (blocks=5).
"""
import numpy as np

from mlc_jax.errors import UserError
from mlc_jax.models import efficientnet_lite, resnet, vgg


def value(var):
  """A parameter or statistic as float32 numpy (a bfloat16-trained model exports in float32)."""
  return np.asarray(var.get_value(), np.float32)


def same_pads(size, kernel, stride):
  """(before, after) of TensorFlow's / lax's SAME on one side of `size` pixels: the output has
  ceil(size / stride) pixels; the padding it needs is split with the odd pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _pair(v):
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def conv(g, x, layer, name, size):
  """An nnx.Conv (HWIO kernel, its strides, padding, feature groups, optional bias) on an NCHW map
  of side `size` -> (node, output side)."""
  kernel = value(layer.kernel)
  k, s = _pair(layer.kernel_size), _pair(layer.strides or 1)
  if k[0] != k[1] or s[0] != s[1]:
    raise UserError(f"ONNX export: layer {name} is not square (kernel {k}, strides {s})")
  k, s = k[0], s[0]
  padding = layer.padding
  if isinstance(padding, str):
    if padding == "VALID":
      before, after = 0, 0
    elif padding == "SAME":
      before, after = same_pads(size, k, s)
    else:
      raise UserError(f"ONNX export: layer {name} has padding {padding!r} (no mapping)")
  else:
    pads = [_pair(p) for p in padding]
    if len(set(pads)) != 1:
      raise UserError(f"ONNX export: layer {name} pads its height and width differently")
    before, after = pads[0]
  inputs = [x, g.const(f"{name}/kernel", kernel.transpose(3, 2, 0, 1))]  # OIHW
  if getattr(layer, "bias", None) is not None and layer.use_bias:
    inputs.append(g.const(f"{name}/bias", value(layer.bias)))
  out = g.op("Conv", inputs, kernel_shape=[k, k], strides=[s, s],
             pads=[before, before, after, after], group=int(layer.feature_group_count))
  return out, (size + before + after - k) // s + 1


def batch_norm(g, x, bn, name):
  """nnx.BatchNorm in inference mode: its running mean and variance, its own epsilon."""
  return g.op("BatchNormalization", [x] + [g.const(f"{name}/{p}", value(getattr(bn, p)))
                                           for p in ("scale", "bias", "mean", "var")],
              epsilon=float(bn.epsilon))


def _vgg(g, x, net):
  size = net.image_size
  for b, n in enumerate(vgg.BLOCKS[net.arch][:net.blocks], 1):
    for i in range(1, n + 1):
      x, size = conv(g, x, getattr(net, f"block{b}_conv{i}"), f"block{b}_conv{i}", size)
      if net.batch_norm:
        x = batch_norm(g, x, getattr(net, f"block{b}_bn{i}"), f"block{b}_bn{i}")
      x = g.op("Relu", [x])
    x, size = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), size // 2
  return x


def _resnet(g, x, net):
  def layer(x, conv_name, bn_name, size):
    x, size = conv(g, x, getattr(net, conv_name), conv_name, size)
    return batch_norm(g, x, getattr(net, bn_name), bn_name), size

  x, size = layer(x, "block1_conv", "block1_bn", net.image_size)
  x = g.op("Relu", [x])
  for b, depth in enumerate(resnet.DEPTHS[net.arch][:net.blocks - 1], 2):
    if b == 2:
      x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
      size = resnet.halved(size)
    for u in range(1, depth + 1):
      p = f"block{b}_unit{u}_"
      y, out = layer(x, p + "conv1", p + "bn1", size)
      y, out = layer(g.op("Relu", [y]), p + "conv2", p + "bn2", out)
      y, out = layer(g.op("Relu", [y]), p + "conv3", p + "bn3", out)
      shortcut = layer(x, p + "downsample_conv", p + "downsample_bn", size)[0] if u == 1 else x
      x, size = g.op("Relu", [g.op("Add", [shortcut, y])]), out
  return x


def _efficientnet_lite(g, x, net):
  relu6 = (g.const("relu6_min", np.float32(0.0)), g.const("relu6_max", np.float32(6.0)))

  def layer(x, name, size, act=True):
    x, size = conv(g, x, getattr(net, f"{name}_conv"), f"{name}_conv", size)
    x = batch_norm(g, x, getattr(net, f"{name}_bn"), f"{name}_bn")
    return (g.op("Clip", [x, *relu6]) if act else x), size

  x, size = layer(x, "block1_stem", net.image_size)
  channels = net.block1_stem_bn.num_features
  for b, i, _, stride, expand, _ in net.mb_specs:
    name, inputs, cin = f"block{b}_mb{i}", x, channels
    if expand != 1:
      x, _ = layer(x, f"{name}_expand", size)
    x, out = layer(x, f"{name}_dw", size)
    x, out = layer(x, f"{name}_project", out, act=False)
    channels = getattr(net, f"{name}_project_bn").num_features
    if stride == 1 and channels == cin:
      x = g.op("Add", [x, inputs])
    size = out
  if net.blocks == 5:
    x, size = layer(x, "block5_head", size)
  return x


WALKERS = {vgg.VGG: _vgg, resnet.ResNet: _resnet,
           efficientnet_lite.EfficientNetLite: _efficientnet_lite}


def features(g, x, net):
  """The backbone's last map (NCHW) from its preprocessed NCHW input, by the backbone's family."""
  walker = WALKERS.get(type(net))
  if walker is None:
    raise UserError(f"--format=onnx: the ONNX graph has no mapping for the backbone "
                    f"{type(net).__name__} ({getattr(net, 'arch', '?')}): export it with "
                    "--format=stablehlo")
  return walker(g, x, net)
