"""VGG11/13/16/19 in Flax NNX, with Keras's layer names so ImageNet files map one to one.

Layers: block{b}_conv{i} (3x3 conv, ReLU; batch-norm variants add block{b}_bn{i} between conv and
ReLU as torchvision's vgg*_bn do), a 2x2 max pool ending each block, then either the ImageNet top
(fc1, fc2, predictions on the flattened 7x7 map at 224 px) or a pooling of the last map. A headless
backbone may stop after block `blocks` < 5 (the bottleneck tapped at block4_pool, say): it then
has no layers above that block.
Input: uint8 (or float 0-255) RGB NHWC; the weights' preprocessing runs inside the model, on device.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from mlc_jax.errors import UserError
from mlc_jax.models.backbone import Backbone, host_initializer, preprocess, scaled
from mlc_jax.ops import conv as conv_ops

# Convolutions per block: the four configurations (A, B, D, E) of Simonyan & Zisserman.
BLOCKS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
BLOCK_CHANNELS = (64, 128, 256, 512, 512)
TOP_UNITS = 4096
MIN_SIZE = 32


def conv_names(arch):
  """Keras names of the convolutions of `arch`, in order: block1_conv1, block1_conv2, ..."""
  return [f"block{b}_conv{i}" for b, n in enumerate(BLOCKS[arch], 1) for i in range(1, n + 1)]


def _windows(x):
  """(N, H, W, C) -> (N, H//2, 2, W//2, 2, C): the 2x2 windows (an odd last row/column dropped)."""
  n, h, w, c = x.shape
  return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x):
  """2x2 max pool, stride 2, 'valid' (odd sizes floor, like Keras MaxPooling2D).

  A reshape and a max, not lax.reduce_window: XLA:CPU's reduce_window and, above all, the
  select-and-scatter of its gradient were ~6x slower (0.4 CPU s of a VGG16 224 px step at batch 4
  for the first pool's gradient alone). The gradient goes to the first maximum of each window in
  row-major order, as reduce_window's (and Keras's, PyTorch's) does.
  """
  return _windows(x).max(axis=(2, 4))


def _max_pool_forward(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _max_pool_backward(residuals, dy):
  x, y = residuals
  hit = _windows(x) == y[:, :, None, :, None, :]
  taken, first = jnp.zeros(y.shape, bool), [[None, None], [None, None]]
  for i in range(2):
    for j in range(2):
      first[i][j] = hit[:, :, i, :, j] & ~taken
      taken = taken | first[i][j]
  mask = jnp.stack([jnp.stack(row, axis=3) for row in first], axis=2)
  dx = jnp.where(mask, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype)).reshape(
      y.shape[0], y.shape[1] * 2, y.shape[2] * 2, y.shape[3])
  return (jnp.pad(dx, ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]),
                       (0, 0))).astype(x.dtype),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


class VGG(Backbone):
  """VGG backbone (headless, pooled) or the full ImageNet classifier (include_top).

  Parameters are float32; convolutions and matmuls compute in `dtype`; outputs are float32.
  include_top with num_classes=0 keeps fc1/fc2 and returns fc2's features (a head then sits on them).
  """
  ARCHS = tuple(BLOCKS)
  MIN_SIZE = MIN_SIZE

  def __init__(self, arch="vgg16", *, include_top=False, pooling="avg", width=1.0, batch_norm=False,
               num_classes=1000, image_size=224, dtype=jnp.float32, preprocessing="caffe",
               blocks=5, rngs=None):
    dtype = self._options(arch, include_top=include_top, pooling=pooling, width=width,
                          num_classes=num_classes, image_size=image_size, dtype=dtype,
                          preprocessing=preprocessing, blocks=blocks)
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.batch_norm = bool(batch_norm)
    names = []
    in_ch = 3
    for b, n in enumerate(BLOCKS[arch][:self.blocks], 1):
      out_ch = scaled(BLOCK_CHANNELS[b - 1], width)
      for i in range(1, n + 1):
        conv = conv_ops.Conv(in_ch, out_ch, (3, 3), padding="SAME", dtype=dtype,
                             param_dtype=jnp.float32, kernel_init=host_initializer("conv"), rngs=rngs)
        setattr(self, f"block{b}_conv{i}", conv)
        names.append(f"block{b}_conv{i}")
        if batch_norm:
          # torchvision's BatchNorm2d: eps 1e-5, running stats momentum 0.1 (Flax counts 1 - that).
          setattr(self, f"block{b}_bn{i}", nnx.BatchNorm(out_ch, momentum=0.9, epsilon=1e-5,
                                                         dtype=dtype, param_dtype=jnp.float32,
                                                         rngs=rngs))
          names.append(f"block{b}_bn{i}")
        in_ch = out_ch
    self.map_size = self.final_map_size(self.image_size, self.blocks)
    self.channels = in_ch
    if self.include_top:
      units = scaled(TOP_UNITS, width)
      dense = dict(dtype=dtype, param_dtype=jnp.float32, kernel_init=host_initializer("dense"),
                   rngs=rngs)
      self.fc1 = nnx.Linear(self.map_size ** 2 * in_ch, units, **dense)
      self.fc2 = nnx.Linear(units, units, **dense)
      names += ["fc1", "fc2"]
      if self.num_classes:
        self.predictions = nnx.Linear(units, self.num_classes, **dense)
        names.append("predictions")
      self.num_features = self.num_classes or units
    elif pooling == "flatten":
      self.num_features = self.map_size ** 2 * in_ch
    else:
      self.num_features = in_ch
    self.layer_names = tuple(names)  # weight-bearing layers in order; a tuple stays static in NNX

  @staticmethod
  def final_map_size(image_size, blocks=5):
    """Side of the last conv block's map after its pooling (floor at each 2x2 pool)."""
    size = int(image_size)
    for _ in range(blocks):
      size //= 2
    return size

  def features(self, images, *, train=False):
    """Conv blocks 1-`blocks` with their pools: (N, H, W, 3) 0-255 RGB -> (N, h, w, C) in `dtype`."""
    x = preprocess(images, self.preprocessing).astype(self.dtype)
    for b, n in enumerate(BLOCKS[self.arch][:self.blocks], 1):
      for i in range(1, n + 1):
        conv = getattr(self, f"block{b}_conv{i}")
        if self.batch_norm:
          # Training: each layer's own mode (use_running_average, set per layer by a stage that
          # freezes some blocks' batch norm); inference: always the running statistics.
          bn = getattr(self, f"block{b}_bn{i}")
          x = jax.nn.relu(bn(conv(x), use_running_average=None if train else True))
        else:
          x = conv(x, relu=True)  # the ReLU fused into oneDNN's convolution on the CPU
      x = max_pool_2x2(x)
    return x

  def __call__(self, images, *, train=False):
    """Images (N, H, W, 3) uint8 RGB -> pooled features (N, D), fc2 features or logits; float32."""
    x = self.features(images, train=train)
    if self.include_top:
      if x.shape[1] != self.map_size or x.shape[2] != self.map_size:
        raise UserError(f"this VGG with its top takes {self.image_size} px images; "
                        f"got {images.shape[1]}x{images.shape[2]}")
      # Flatten in H, W, C order: Keras's Flatten in channels_last (torch's CHW is converted on load).
      x = x.reshape(x.shape[0], -1)
      x = jax.nn.relu(self.fc1(x))
      x = jax.nn.relu(self.fc2(x))
      if self.num_classes:
        x = self.predictions(x)
      return x.astype(jnp.float32)
    return self.pool(x)

  @classmethod
  def from_config(cls, config, preprocessing, rngs, num_classes=0):
    m = config.model
    return cls(m.arch, include_top=m.include_top, pooling=m.pooling, width=m.width,
               batch_norm=m.batch_norm, num_classes=num_classes, image_size=config.image_size,
               dtype=config.dtype, preprocessing=preprocessing, blocks=int(m.get("blocks", 5)),
               rngs=rngs)

