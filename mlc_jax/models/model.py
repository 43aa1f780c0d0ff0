"""The multi-label model (a backbone of any family + head) built from the config, and its outputs.

Weights come in through mlc_jax.models.pretrained; whole single-label classifiers from a file
(ImageNet's, or one mlc_jax exported) are mlc_jax.models.classifiers'.
"""
import functools

import jax
import numpy as np
from flax import nnx

from mlc_jax import parallel
from mlc_jax.models import families, weights
from mlc_jax.models.head import Head
from mlc_jax.ops import conv

# What a checkpoint keeps of a model: parameters and BatchNorm statistics, not RNG streams.
SAVED = nnx.Any(nnx.Param, nnx.BatchStat)


class MultiLabelModel(nnx.Module):
  """`backbone` (a models.backbone.Backbone: headless, or VGG with fc1/fc2) followed by `head`
  (Head); returns logits."""

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
  """The backbone of config.model.arch's family from config.model and config.image_size/dtype alone
  (randomly initialised, no file read)."""
  rngs = rngs if rngs is not None else nnx.Rngs(int(config.seed))
  return families.of(config.model.arch).cls.from_config(config, preprocessing_of(config), rngs)


def build_model(config, num_classes, *, rngs=None):
  """MultiLabelModel(backbone, head) from the config alone; weights come from load_backbone_weights."""
  rngs = rngs if rngs is not None else nnx.Rngs(int(config.seed))
  backbone = build_backbone(config, rngs=rngs)
  head = Head(backbone.num_features, int(num_classes), hidden=config.head.hidden,
              dropout=config.head.dropout, rngs=rngs)
  return MultiLabelModel(backbone, head)


def activation(logits, name):
  """Logits -> scores: sigmoid (multi-label) or softmax (single-label, for comparison)."""
  return jax.nn.softmax(logits, axis=-1) if name == "softmax" else jax.nn.sigmoid(logits)


def probabilities(graphdef, state, images, activation_name):
  """Scores of a merged model in inference mode (pure: jit it with graphdef static)."""
  return activation(nnx.merge(graphdef, state)(images, train=False), activation_name)


def forward(graphdef, activation_name="sigmoid", mesh=None, compiler_options=()):
  """The one jitted forward: fn(state, images) -> scores (`probabilities` of the model graphdef).

  mesh: the state replicated and images and scores split over its 'data' axis; None: wherever
  the arguments are. compiler_options: parallel.jit_options of the model. Cached by (graphdef,
  activation, mesh, options, whether ops.conv.lax_only is on): a model split again compiles
  once, and one asked for inside lax_only traces its own program with lax.conv.
  """
  return _forward(graphdef, activation_name, mesh, compiler_options, conv.in_lax_only())


@functools.lru_cache(maxsize=16)
def _forward(graphdef, activation_name, mesh, compiler_options, lax_only):
  del lax_only  # a cache key only: jit's own trace cache does not see ops.conv.lax_only
  fn = functools.partial(probabilities, graphdef, activation_name=activation_name)
  options = dict(compiler_options)
  if mesh is None:
    return jax.jit(fn, compiler_options=options)
  data = parallel.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(parallel.replicated(mesh), data), out_shardings=data,
                 compiler_options=options)


def flat_params(model):
  """{'backbone/block1_conv1/kernel': numpy array, ...}: every parameter and batch statistic."""
  flat = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, SAVED)):
    flat["/".join(str(p) for p in path)] = np.asarray(variable.get_value())
  return flat
