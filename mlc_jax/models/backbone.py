"""What the package needs of a backbone, whatever its family (VGG, ResNet, EfficientNet-Lite).

A backbone is an nnx.Module subclassing Backbone: uint8 (or float 0-255) RGB NHWC images in, the
weights' preprocessing inside (on device), float32 features or ImageNet logits out. Its layers are
attributes named block{b}_... where b (1-5) is the resolution stage ending at stride 2**b (VGG's
conv blocks; ResNet's stem and its four stages; EfficientNet-Lite's stages grouped by stride), so
`model.blocks` (where the bottleneck is tapped), `finetune.unfreeze_blocks`, parameter groups and
the batch-norm policy mean the same for every family; the ImageNet top is fc1/fc2/predictions.

A family sets ARCHS (the model.arch values it builds) and implements `features` (blocks
1..`blocks`) and `from_config`; the pooling, the top and the option checks are shared here. Which
files a family reads, and where its ImageNet weights come from, is mlc_jax.models.families'.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlc_jax.errors import UserError

POOLINGS = ("avg", "max", "flatten", None)
CONVENTIONS = ("caffe", "torch", "tf", "unit")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def scaled(channels, width):
  """Channels of a layer under the width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def block_of(path):
  """Block (1-5) of a parameter path ('backbone/block3_conv2/kernel', 'backbone/block4_unit2_bn1/
  scale' or a tuple); 6 for the ImageNet top (fc1/fc2/predictions); None for anything else (the
  head). Every family names its layers block{b}_..., b the resolution stage (stride 2**b)."""
  parts = path.split("/") if isinstance(path, str) else [str(p) for p in path]
  if "head" in parts:
    return None  # the multi-label head's fc1/predictions are not the ImageNet top
  for part in parts:
    match = re.fullmatch(r"block(\d)_\w+", part)
    if match:
      return int(match.group(1))
    if part in ("fc1", "fc2", "predictions"):
      return 6
  return None


def preprocess(images, convention):
  """uint8/float 0-255 RGB NHWC -> float32 input of the network trained under `convention`.

  caffe (Keras's VGG/ResNet files): RGB->BGR minus the BGR means on 0-255; torch (torchvision/timm):
  /255 then ImageNet mean/std; tf (EfficientNet-Lite, Keras's 'tf' mode): /127.5 - 1, i.e.
  (x/255 - 0.5)/0.5; unit (from scratch): /255. Plain jnp ops so XLA fuses them into the first conv.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if convention == "caffe":
    return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
  if convention == "torch":
    return (x / 255.0 - jnp.asarray(TORCH_MEAN, jnp.float32)) / jnp.asarray(TORCH_STD, jnp.float32)
  if convention == "tf":
    return x / 127.5 - 1.0
  return x / 255.0  # unit (the constructor holds a backbone to CONVENTIONS)


def host_initializer(kind):
  """Initializer drawing on the host with numpy, seeded from the JAX key; the jax.nn one when traced.

  Why: XLA on CPU compiles a threefry program per parameter shape (seconds each), which made
  building a VGG take half a minute. kind: 'conv' (He normal, fan_out: torchvision's VGG init),
  'depthwise' (He normal over a depthwise filter's k*k taps: TF EfficientNet's),
  'dense' (normal, std 0.01: torchvision's) or 'glorot' (Keras Dense's default, for the head).
  """
  traced = {"conv": jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            "depthwise": jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
            "dense": jax.nn.initializers.normal(0.01),
            "glorot": jax.nn.initializers.glorot_uniform()}[kind]

  def init(key, shape, dtype=jnp.float32):
    try:
      seed = np.asarray(jax.random.key_data(key)).ravel()
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
      return traced(key, shape, dtype)  # under jit or eval_shape: stay on device (or abstract)
    rng = np.random.default_rng(seed)
    fan_in, fan_out = np.prod(shape[:-1]), shape[-1] * np.prod(shape[:-2])
    if kind == "conv":
      values = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_out))
    elif kind == "depthwise":  # (k, k, 1, C): each filter's fan is k*k (TF EfficientNet's init)
      values = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    elif kind == "dense":
      values = rng.standard_normal(shape, np.float32) * np.float32(0.01)
    else:
      limit = np.sqrt(6.0 / (fan_in + fan_out))
      values = rng.uniform(-limit, limit, shape).astype(np.float32)
    return jnp.asarray(values, dtype)
  return init


class Backbone(nnx.Module):
  """The shared part of every family: option checks, pooling and the avg-pooled ImageNet top."""
  ARCHS = ()          # model.arch values of the family
  MIN_SIZE = 32       # smallest image side: five halvings

  def _options(self, arch, *, include_top, pooling, width, num_classes, image_size, dtype,
               preprocessing, blocks):
    """Checks and keeps the options every family has; returns the compute dtype."""
    if arch not in self.ARCHS:
      raise UserError(f"model.arch={arch!r} is not one of {sorted(self.ARCHS)}")
    if int(blocks) not in range(1, 6) or (include_top and int(blocks) != 5):
      raise UserError(f"model.blocks={blocks} must be 1-5 (5 with the ImageNet top)")
    if pooling not in POOLINGS:
      raise UserError(f"model.pooling={pooling!r} is not one of {POOLINGS}")
    if preprocessing not in CONVENTIONS:
      raise UserError(f"model.preprocessing={preprocessing!r} is not one of {CONVENTIONS}")
    if int(image_size) < self.MIN_SIZE:
      raise UserError(f"image_size={image_size} is too small: {arch} needs at least "
                      f"{self.MIN_SIZE} px (five halvings)")
    if not width > 0:
      raise UserError(f"model.width={width} must be > 0")
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
      raise UserError(f"dtype={dtype!r} is not float32 or bfloat16")
    self.arch, self.include_top, self.pooling = arch, bool(include_top), pooling
    self.image_size, self.dtype, self.preprocessing = int(image_size), dtype, preprocessing
    self.width, self.num_classes, self.blocks = float(width), int(num_classes), int(blocks)
    return dtype

  def features(self, images, *, train=False):
    """Blocks 1..`blocks`: (N, H, W, 3) 0-255 RGB -> (N, h, w, C) in `dtype`."""
    raise NotImplementedError(type(self).__name__)

  def pool(self, x):
    """The last map (N, h, w, C) -> (N, D) float32 by `pooling` (None: the map itself)."""
    if self.pooling == "avg":
      return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.pooling == "max":
      x = jnp.max(x, axis=(1, 2))
    elif self.pooling == "flatten":
      x = x.reshape(x.shape[0], -1)
    return x.astype(jnp.float32)

  def __call__(self, images, *, train=False):
    """Images (N, H, W, 3) uint8 RGB -> pooled features (N, D) or, with the top, ImageNet logits
    (global average pool then `predictions`; num_classes=0: the pooled features); float32."""
    x = self.features(images, train=train)
    if self.include_top:
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      return self.predictions(x).astype(jnp.float32) if self.num_classes else x
    return self.pool(x)

  @classmethod
  def from_config(cls, config, preprocessing, rngs, num_classes=0):
    """The randomly initialised backbone config.model asks for (no file read); num_classes > 0
    with model.include_top: the ImageNet classifier itself (its `predictions` layer)."""
    raise NotImplementedError(cls.__name__)
