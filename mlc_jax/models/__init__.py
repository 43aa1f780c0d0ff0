"""The multi-label model (VGG backbone + head) built from the config, and its ImageNet weights."""
import numpy as np
from flax import nnx

from mlc_jax.errors import UserError
from mlc_jax.models import imagenet
from mlc_jax.models.head import Head
from mlc_jax.models.vgg import VGG, block_of

__all__ = ["MultiLabelModel", "VGG", "Head", "block_of", "build_backbone", "build_model",
           "load_backbone_weights", "flat_params"]


class MultiLabelModel(nnx.Module):
  """`backbone` (VGG, headless or with fc1/fc2) followed by `head` (Head); returns logits."""

  def __init__(self, backbone, head):
    self.backbone = backbone
    self.head = head

  def __call__(self, images, *, train=False, rngs=None):
    """uint8 images (N, H, W, 3) RGB -> logits (N, C) float32."""
    return self.head(self.backbone(images, train=train), train=train, rngs=rngs)


def preprocessing_of(config):
  """The preprocessing convention the config asks for: forced, or the weights' own."""
  return config.model.preprocessing or imagenet.convention_for(config.model.weights)


def build_backbone(config, *, rngs=None):
  """VGG from config.model and config.image_size/dtype alone (randomly initialised, no file read)."""
  m = config.model
  if m.include_top and m.weights and int(config.image_size) != 224:
    raise UserError(f"model.include_top=True keeps ImageNet's fc1, which takes 224 px images; "
                    f"image_size is {config.image_size}: set image_size=224 or include_top=False")
  if m.weights == "imagenet" and m.batch_norm:
    raise UserError("model.weights='imagenet' (Keras files) has no batch-norm variant; give a "
                    "torchvision vgg*_bn safetensors file or set model.batch_norm=False")
  if config.dtype not in ("float32", "bfloat16"):
    raise UserError(f"dtype={config.dtype!r} is not float32 or bfloat16")
  return VGG(m.arch, include_top=m.include_top, pooling=m.pooling, width=m.width,
             batch_norm=m.batch_norm, num_classes=0, image_size=config.image_size,
             dtype=config.dtype, preprocessing=preprocessing_of(config),
             rngs=rngs if rngs is not None else nnx.Rngs(int(config.seed)))


def build_model(config, num_classes, *, rngs=None):
  """MultiLabelModel(backbone, head) from the config alone; weights come from load_backbone_weights."""
  rngs = rngs if rngs is not None else nnx.Rngs(int(config.seed))
  backbone = build_backbone(config, rngs=rngs)
  head = Head(backbone.num_features, int(num_classes), hidden=config.head.hidden,
              dropout=config.head.dropout, rngs=rngs)
  return MultiLabelModel(backbone, head)


def weights_path(config):
  """Local path of config.model.weights ('imagenet' is fetched into the cache); None for ''."""
  m = config.model
  if not m.weights:
    return None
  if m.weights == "imagenet":
    name = imagenet.keras_file_name(m.arch, m.include_top)
    return imagenet.fetch(name, m.cache_dir or None, url=m.get("weights_url") or None)
  return m.weights


def load_backbone_weights(backbone, config):
  """Loads config.model.weights into `backbone` in place ('' leaves it as initialised); returns it."""
  path = weights_path(config)
  if path is not None:
    imagenet.load_into(backbone, path)
  return backbone


def flat_params(model):
  """{'backbone/block1_conv1/kernel': numpy array, ...}: every parameter and batch statistic."""
  flat = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    flat["/".join(str(p) for p in path)] = np.asarray(variable.get_value())
  return flat
