"""EfficientNet-Lite0 (Tan & Le's EfficientNet-B0 made for mobile accelerators) in Flax NNX.

Lite differs from B0 as the authors' TensorFlow code (tensorflow/tpu models/official/efficientnet/
lite) builds it: ReLU6 instead of swish, no squeeze-and-excite, the stem (32) and head (1280)
widths fixed. Batch norm eps 1e-3 (TensorFlow's); every convolution TensorFlow-style SAME
(lax's 'SAME': for stride 2 the odd pixel of padding goes after, not before); no bias in any
convolution (batch norm follows each). 16 inverted-residual (MBConv) blocks in 7 stages, stride 2
in the stem and in MBConv 1, 3, 5 and 11 (0-based), a residual add where stride is 1 and width
unchanged. Input (x/255 - 0.5)/0.5 (backbone.preprocess 'tf').

Layer names follow the package's block convention (models/backbone.py): block b holds what runs at
stride 2**b, so block1 = the stem and MBConv 0, block2 = MBConv 1-2, block3 = 3-4, block4 = 5-10,
block5 = 11-15 and the 1280 head convolution. Within a block, MBConvs count from 1:
block{b}_mb{i}_{expand,dw,project}_{conv,bn}; block1_stem_{conv,bn}, block5_head_{conv,bn};
the ImageNet top is `predictions` (average pool, no dropout at inference). `width` scales every
layer's channels (tiny test models); width 1 is the published network.
"""
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlc_jax.errors import UserError
from mlc_jax.models.backbone import Backbone, host_initializer, preprocess, scaled
from mlc_jax.ops import conv as conv_ops

# Stages of B0 (= Lite0): (repeats, kernel, first stride, expansion, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
BN_EPS = 1e-3
PADDING = "SAME"  # lax's SAME is TensorFlow's: pad_before = total // 2, the rest after


def mbconvs():
  """[(block, index in block, kernel, stride, expansion, out channels)] of the 16 MBConvs."""
  specs, block, index = [], 1, 0
  for repeats, kernel, stride, expand, out in STAGES:
    for r in range(repeats):
      s = stride if r == 0 else 1
      if s == 2:
        block, index = block + 1, 0
      index += 1
      specs.append((block, index, kernel, s, expand, out))
  return specs


def layer_names(blocks=5, include_top=True):
  """The weight-bearing layers in network order (convolutions and batch norms, then the top)."""
  names = ["block1_stem_conv", "block1_stem_bn"]
  for b, i, _, _, expand, _ in mbconvs():
    if b > blocks:
      break
    parts = (("expand",) if expand != 1 else ()) + ("dw", "project")
    names += [f"block{b}_mb{i}_{part}_{kind}" for part in parts for kind in ("conv", "bn")]
  if blocks == 5:
    names += ["block5_head_conv", "block5_head_bn"]
  return names + (["predictions"] if include_top else [])


def relu6(x):
  return jnp.clip(x, 0, 6)


class EfficientNetLite(Backbone):
  """EfficientNet-Lite0 backbone (headless, pooled) or the ImageNet classifier (include_top).

  Parameters float32; convolutions compute in `dtype`; outputs float32. include_top with
  num_classes=0 returns the pooled 1280 head features (a multi-label head then sits on them).
  """
  ARCHS = ("efficientnet_lite0",)

  def __init__(self, arch="efficientnet_lite0", *, include_top=False, pooling="avg", width=1.0,
               num_classes=1000, image_size=224, dtype=jnp.float32, preprocessing="tf", blocks=5,
               rngs=None):
    dtype = self._options(arch, include_top=include_top, pooling=pooling, width=width,
                          num_classes=num_classes, image_size=image_size, dtype=dtype,
                          preprocessing=preprocessing, blocks=blocks)
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    depthwise_init = host_initializer("depthwise")
    self.batch_norm = True  # every convolution is followed by one (the BN policy applies)
    conv = dict(padding=PADDING, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                kernel_init=host_initializer("conv"), rngs=rngs,
                conv_general_dilated=conv_ops.conv_general_dilated)

    def bn(channels):
      # TensorFlow's eps; running statistics momentum 0.1 per step as torchvision's (Flax: 0.9).
      return nnx.BatchNorm(channels, momentum=0.9, epsilon=BN_EPS, dtype=dtype,
                           param_dtype=jnp.float32, rngs=rngs)

    cin = scaled(STEM, width)
    self.block1_stem_conv = nnx.Conv(3, cin, (3, 3), strides=2, **conv)
    self.block1_stem_bn = bn(cin)
    size = -(-self.image_size // 2)
    self.mb_specs = tuple(spec for spec in mbconvs() if spec[0] <= self.blocks)
    for b, i, kernel, stride, expand, out in self.mb_specs:
      name, mid, cout = f"block{b}_mb{i}", cin * expand, scaled(out, width)
      if expand != 1:
        setattr(self, f"{name}_expand_conv", nnx.Conv(cin, mid, (1, 1), **conv))
        setattr(self, f"{name}_expand_bn", bn(mid))
      setattr(self, f"{name}_dw_conv", nnx.Conv(mid, mid, (kernel, kernel), strides=stride,
                                                feature_group_count=mid,
                                                **{**conv, "kernel_init": depthwise_init}))
      setattr(self, f"{name}_dw_bn", bn(mid))
      setattr(self, f"{name}_project_conv", nnx.Conv(mid, cout, (1, 1), **conv))
      setattr(self, f"{name}_project_bn", bn(cout))
      size, cin = -(-size // stride), cout
    if self.blocks == 5:
      head = scaled(HEAD, width)
      self.block5_head_conv = nnx.Conv(cin, head, (1, 1), **conv)
      self.block5_head_bn = bn(head)
      cin = head
    self.channels, self.map_size = cin, size
    if self.include_top and self.num_classes:
      self.predictions = nnx.Linear(cin, self.num_classes, dtype=dtype, param_dtype=jnp.float32,
                                    kernel_init=host_initializer("dense"), rngs=rngs)
    if self.include_top:
      self.num_features = self.num_classes or cin
    else:
      self.num_features = size * size * cin if pooling == "flatten" else cin
    self.layer_names = tuple(layer_names(self.blocks, self.include_top and bool(self.num_classes)))

  def _conv_bn(self, name, x, train, act=True):
    x = getattr(self, f"{name}_conv")(x)
    # Training: each layer's own mode (a stage freezing some blocks' batch norm sets it per
    # layer); inference: always the running statistics.
    x = getattr(self, f"{name}_bn")(x, use_running_average=None if train else True)
    return relu6(x) if act else x

  def features(self, images, *, train=False):
    """Stem, MBConvs and (blocks=5) the head conv: 0-255 RGB NHWC -> (N, h, w, C) in `dtype`."""
    x = preprocess(images, self.preprocessing).astype(self.dtype)
    x = self._conv_bn("block1_stem", x, train)
    for b, i, _, stride, expand, _ in self.mb_specs:
      name, inputs = f"block{b}_mb{i}", x
      if expand != 1:
        x = self._conv_bn(f"{name}_expand", x, train)
      x = self._conv_bn(f"{name}_dw", x, train)
      x = self._conv_bn(f"{name}_project", x, train, act=False)
      if stride == 1 and x.shape[-1] == inputs.shape[-1]:
        x = x + inputs
    if self.blocks == 5:
      x = self._conv_bn("block5_head", x, train)
    return x

  @classmethod
  def from_config(cls, config, preprocessing, rngs, num_classes=0):
    m = config.model
    return cls(m.arch, include_top=m.include_top, pooling=m.pooling, width=m.width,
               num_classes=num_classes, image_size=config.image_size, dtype=config.dtype,
               preprocessing=preprocessing, blocks=int(m.get("blocks", 5)), rngs=rngs)


def from_torch(state_dict, origin="state dict"):
  """The authors' PyTorch port's keys (_conv_stem, _bn0, _blocks.N._expand_conv/_bn0,
  _depthwise_conv/_bn1, _project_conv/_bn2, _conv_head, _bn1, _fc) -> {our layer: {param: array}}
  (conv kernels OIHW -> HWIO, the depthwise (C, 1, k, k) -> (k, k, 1, C), _fc (out, in) -> (in, out))."""
  def conv(key):
    return {"kernel": np.asarray(tensor(key + ".weight"), np.float32).transpose(2, 3, 1, 0)}

  def bn(key):
    return {p: np.asarray(tensor(f"{key}.{t}"), np.float32) for p, t in
            (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))}

  def tensor(key):
    if key not in state_dict:
      raise UserError(f"weights file {origin} has no tensor {key}: it is not an EfficientNet-Lite0 "
                      "state dict in the authors' PyTorch layout")
    return state_dict[key]

  layers = {"block1_stem_conv": conv("_conv_stem"), "block1_stem_bn": bn("_bn0")}
  for n, (b, i, _, _, expand, _) in enumerate(mbconvs()):
    ours, theirs = f"block{b}_mb{i}", f"_blocks.{n}"
    if expand != 1:
      layers[f"{ours}_expand_conv"], layers[f"{ours}_expand_bn"] = (
          conv(f"{theirs}._expand_conv"), bn(f"{theirs}._bn0"))
    layers[f"{ours}_dw_conv"], layers[f"{ours}_dw_bn"] = (
        conv(f"{theirs}._depthwise_conv"), bn(f"{theirs}._bn1"))
    layers[f"{ours}_project_conv"], layers[f"{ours}_project_bn"] = (
        conv(f"{theirs}._project_conv"), bn(f"{theirs}._bn2"))
  layers["block5_head_conv"], layers["block5_head_bn"] = conv("_conv_head"), bn("_bn1")
  layers["predictions"] = {"kernel": np.asarray(tensor("_fc.weight"), np.float32).T,
                           "bias": np.asarray(tensor("_fc.bias"), np.float32)}
  return layers
