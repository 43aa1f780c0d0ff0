"""The random torchvision ResNet both sides of the torchvision parity test draw with numpy alone:
tests/fixtures/make_resnet_torchvision_reference.py (run once with torch + torchvision, it checks
these keys and shapes against torchvision's own state_dict) and tests/test_models_resnet.py (no
torch: it redraws the same arrays and compares our logits with the committed torchvision logits)."""
import numpy as np

DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
SEED = {"resnet50": 50, "resnet101": 101}
IMAGE_SIZE, NUM_IMAGES = 64, 2


def _bn(prefix, ch):
  return [(prefix + p, (ch,)) for p in ("weight", "bias", "running_mean", "running_var")]


def state_dict_shapes(arch):
  """[(key, shape)] of torchvision's resnet50/101 state_dict, in its order, num_batches_tracked left
  out (written from torchvision/models/resnet.py's Bottleneck; the script checks it)."""
  keys = [("conv1.weight", (64, 3, 7, 7))] + _bn("bn1.", 64)
  cin = 64
  for stage, depth in enumerate(DEPTHS[arch], 1):
    mid = 64 * 2 ** (stage - 1)
    out = 4 * mid
    for unit in range(depth):
      p = f"layer{stage}.{unit}."
      keys += [(p + "conv1.weight", (mid, cin, 1, 1))] + _bn(p + "bn1.", mid)
      keys += [(p + "conv2.weight", (mid, mid, 3, 3))] + _bn(p + "bn2.", mid)
      keys += [(p + "conv3.weight", (out, mid, 1, 1))] + _bn(p + "bn3.", out)
      if unit == 0:
        keys += [(p + "downsample.0.weight", (out, cin, 1, 1))] + _bn(p + "downsample.1.", out)
      cin = out
  return keys + [("fc.weight", (1000, cin)), ("fc.bias", (1000,))]


def draw(arch):
  """{key: float32 array}: He-normal convs, batch norms with statistics away from 0/1 (so their
  loading and eps matter) and small residual-branch gains (so 33 units neither vanish nor explode)."""
  rng = np.random.default_rng(SEED[arch])
  out = {}
  for key, shape in state_dict_shapes(arch):
    if len(shape) == 4:
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif key == "fc.weight":
      value = rng.standard_normal(shape) * 3.0 / np.sqrt(shape[1])
    elif key.endswith("running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    elif key.endswith("running_mean"):
      value = rng.normal(0.0, 0.2, shape)
    elif key.endswith("weight"):  # batch-norm gain: smaller on the residual branch's last
      value = rng.uniform(0.1, 0.4, shape) if ".bn3." in key else rng.uniform(0.5, 1.0, shape)
    else:  # batch-norm and fc biases
      value = rng.normal(0.0, 0.1, shape)
    out[key] = value.astype(np.float32)
  return out


def images():
  """(NUM_IMAGES, 64, 64, 3) uint8 RGB, fixed."""
  return np.random.default_rng(7).integers(0, 256, (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3),
                                           dtype=np.uint8)


def torch_preprocess(x):
  """torchvision's transform in numpy: /255, ImageNet mean/std (float64, then float32)."""
  x = x.astype(np.float64) / 255.0
  return ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
