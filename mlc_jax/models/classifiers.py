"""Whole single-label classifiers from a weights file with its top: ImageNet's (1000 classes; any
backbone family) and
the classifier files mlc_jax exports (`--mode=export --format=keras_h5`), as models that predict."""
import json

import jax
import ml_collections
from flax import nnx

from mlc_jax.errors import UserError
from mlc_jax.models import families, imagenet, pretrained, weights
from mlc_jax.models.head import Head
from mlc_jax.models.model import MultiLabelModel, preprocessing_of
from mlc_jax.models.backbone import scaled
from mlc_jax.models.vgg import VGG


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


def imagenet_classifier(arch, path="imagenet", *, width=1.0, resnet_layout="torchvision",
                        cache_dir=None, dtype="float32"):
  """(backbone of model.arch=arch with its 1000-class ImageNet top, weights path) at 224 px.

  `path`: what model.weights takes for that family ('imagenet' for Keras's VGG and ResNet files,
  'efficientnet-lite0', a file). A VGG's architecture comes from its file (imagenet_vgg); the other
  families are built from arch, width and resnet_layout, and their loader checks the file fits.
  """
  family = families.of(arch)
  if family.name == "vgg":
    return imagenet_vgg(path, cache_dir=cache_dir, dtype=dtype)
  c = ml_collections.ConfigDict({
      "model": {"arch": arch, "width": float(width), "resnet_layout": resnet_layout,
                "include_top": True, "pooling": "avg", "blocks": 5, "weights": str(path),
                "preprocessing": "", "cache_dir": cache_dir or "", "batch_norm": False},
      "image_size": 224, "dtype": dtype})
  found = pretrained.weights_path(c)
  model = family.cls.from_config(c, preprocessing_of(c), nnx.Rngs(0),
                                 num_classes=len(imagenet.IMAGENET_CLASSES))
  family.load(model, found)
  return model, str(found)
