"""ResNet-50/101 in Flax NNX, in two layouts, with layer names on the package's block convention.

Layouts (model.resnet_layout), read from the two reference implementations:
- 'torchvision' = torchvision/models/resnet.py (ResNet v1.5, `Bottleneck`): the stride-2 of a
  stage's first unit sits in its 3x3 conv (conv2, padding 1) and in the 1x1 `downsample` conv;
  convolutions have no bias; BatchNorm2d eps 1e-5. Its files are state_dicts saved as safetensors.
- 'keras' = keras/src/applications/resnet.py (keras.applications.ResNet50/101, ResNet v1,
  `residual_block_v1`): the stride-2 sits in the unit's first 1x1 conv (`_1_conv`) and in the
  `_0_conv` shortcut; every convolution has a bias; BatchNormalization eps 1.001e-5. Its files are
  the .h5 files of keras.applications (resnet50_weights_tf_dim_ordering_tf_kernels.h5, ...).
Both: stem 7x7/2 conv (padding 3) + BN + ReLU, 3x3/2 max pool (padding 1, after a ReLU so zero or
-inf padding agree), bottleneck stages of (3, 4, 6, 3) / (3, 4, 23, 3) units with 64, 128, 256,
512 inner and 4x those outer channels, global average pool and a 1000-way dense top.

Layer names (block b = resolution stage ending at stride 2**b, see models/backbone.py):
block1_conv, block1_bn (the stem, stride 2); block{b}_unit{u}_conv{1,2,3} / _bn{1,2,3} and
block{b}_unit1_downsample_conv / _bn for b = 2..5 (torchvision's layer1..layer4, Keras's
conv2..conv5; block 2 starts with the max pool); predictions (the ImageNet top).
Input: uint8 (or float 0-255) RGB NHWC; the weights' preprocessing runs inside the model.
"""
import re

import jax
import jax.numpy as jnp
from flax import nnx

from mlc_jax.errors import UserError
from mlc_jax.models.backbone import Backbone, host_initializer, preprocess, scaled
from mlc_jax.ops import conv as conv_ops

DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
PLANES = (64, 128, 256, 512)  # inner channels of stages 2-5; outer = EXPANSION x
EXPANSION = 4
STEM = 64
LAYOUTS = ("torchvision", "keras")
EPSILON = {"torchvision": 1e-5, "keras": 1.001e-5}


def halved(size):
  """Side after a stride-2 layer of this network (7x7 pad 3, 3x3 pad 1 or 1x1 pad 0): ceil(size/2)."""
  return (int(size) + 1) // 2


def max_pool_3x3(x):
  """3x3 max pool, stride 2, padding 1 (padded with -inf: torch's MaxPool2d(3, 2, 1); Keras pads with
  zeros after a ReLU, the same). The max of 9 strided slices: cheap forward and backward on CPU."""
  n, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  oh, ow = halved(h), halved(w)
  out = None
  for i in range(3):
    for j in range(3):
      window = x[:, i:i + 2 * oh - 1:2, j:j + 2 * ow - 1:2]
      out = window if out is None else jnp.maximum(out, window)
  return out


def unit_names(b, u):
  """Weight-bearing layers of unit u of block b, in order."""
  prefix = f"block{b}_unit{u}_"
  names = [prefix + n for i in (1, 2, 3) for n in (f"conv{i}", f"bn{i}")]
  return names + ([prefix + "downsample_conv", prefix + "downsample_bn"] if u == 1 else [])


def is_bn(name):
  """Whether layer `name` of a ResNet is a batch norm (else a conv or the dense top)."""
  return re.search(r"_bn\d?$", name) is not None


class ResNet(Backbone):
  """ResNet-50/101 backbone (headless, pooled or tapped at block `blocks`) or the ImageNet classifier.

  Parameters are float32; convolutions compute in `dtype`; outputs are float32. include_top with
  num_classes=0 returns the average-pooled last map (a head then sits on it).
  """
  ARCHS = tuple(DEPTHS)

  def __init__(self, arch="resnet50", *, layout="torchvision", include_top=False, pooling="avg",
               width=1.0, num_classes=1000, image_size=224, dtype=jnp.float32,
               preprocessing="torch", blocks=5, rngs=None):
    dtype = self._options(arch, include_top=include_top, pooling=pooling, width=width,
                          num_classes=num_classes, image_size=image_size, dtype=dtype,
                          preprocessing=preprocessing, blocks=blocks)
    if layout not in LAYOUTS:
      raise UserError(f"model.resnet_layout={layout!r} is not one of {LAYOUTS}")
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.layout = layout
    names = []

    def conv(name, cin, cout, k, stride):
      pad = (k - 1) // 2
      setattr(self, name, conv_ops.Conv(cin, cout, (k, k), strides=stride,
                                        padding=((pad, pad),) * 2, use_bias=layout == "keras",
                                        dtype=dtype, param_dtype=jnp.float32,
                                        kernel_init=host_initializer("conv"), rngs=rngs))
      names.append(name)

    def bn(name, ch):
      # torchvision's running-stats momentum 0.1 (Flax counts 1 - that), both layouts.
      setattr(self, name, nnx.BatchNorm(ch, momentum=0.9, epsilon=EPSILON[layout], dtype=dtype,
                                        param_dtype=jnp.float32, rngs=rngs))
      names.append(name)

    cin = scaled(STEM, width)
    conv("block1_conv", 3, cin, 7, 2)
    bn("block1_bn", cin)
    size = halved(self.image_size)
    for b, depth in enumerate(DEPTHS[arch][:self.blocks - 1], 2):
      mid, out = scaled(PLANES[b - 2], width), scaled(PLANES[b - 2] * EXPANSION, width)
      size = halved(size)  # block 2: the max pool; blocks 3-5: the first unit's stride
      for u in range(1, depth + 1):
        stride = 2 if u == 1 and b > 2 else 1
        p = f"block{b}_unit{u}_"
        conv(p + "conv1", cin, mid, 1, stride if layout == "keras" else 1)
        bn(p + "bn1", mid)
        conv(p + "conv2", mid, mid, 3, stride if layout == "torchvision" else 1)
        bn(p + "bn2", mid)
        conv(p + "conv3", mid, out, 1, 1)
        bn(p + "bn3", out)
        if u == 1:
          conv(p + "downsample_conv", cin, out, 1, stride)
          bn(p + "downsample_bn", out)
        cin = out
    self.map_size, self.channels = size, cin
    if self.include_top and self.num_classes:
      self.predictions = nnx.Linear(cin, self.num_classes, dtype=dtype, param_dtype=jnp.float32,
                                    kernel_init=host_initializer("dense"), rngs=rngs)
      names.append("predictions")
    if self.include_top:
      self.num_features = self.num_classes or cin
    elif pooling == "flatten":
      self.num_features = size * size * cin
    else:
      self.num_features = cin
    self.layer_names = tuple(names)  # weight-bearing layers in order; a tuple stays static in NNX

  def _unit(self, x, b, u, running):
    layer = lambda name: getattr(self, f"block{b}_unit{u}_{name}")  # noqa: E731
    y = jax.nn.relu(layer("bn1")(layer("conv1")(x), use_running_average=running))
    y = jax.nn.relu(layer("bn2")(layer("conv2")(y), use_running_average=running))
    y = layer("bn3")(layer("conv3")(y), use_running_average=running)
    if u == 1:
      x = layer("downsample_bn")(layer("downsample_conv")(x), use_running_average=running)
    return jax.nn.relu(x + y)

  def features(self, images, *, train=False):
    """Stem and stages 2-`blocks`: (N, H, W, 3) 0-255 RGB -> (N, h, w, C) in `dtype`."""
    # Training: each layer's own mode (a stage freezing some blocks' batch norm sets it per layer);
    # inference: always the running statistics.
    running = None if train else True
    x = preprocess(images, self.preprocessing).astype(self.dtype)
    x = jax.nn.relu(self.block1_bn(self.block1_conv(x), use_running_average=running))
    for b, depth in enumerate(DEPTHS[self.arch][:self.blocks - 1], 2):
      if b == 2:
        x = max_pool_3x3(x)
      for u in range(1, depth + 1):
        x = self._unit(x, b, u, running)
    return x

  @classmethod
  def from_config(cls, config, preprocessing, rngs, num_classes=0):
    m = config.model
    return cls(m.arch, layout=m.get("resnet_layout", "torchvision"), include_top=m.include_top,
               pooling=m.pooling, width=m.width, num_classes=num_classes,
               image_size=config.image_size, dtype=config.dtype, preprocessing=preprocessing,
               blocks=int(m.get("blocks", 5)), rngs=rngs)
