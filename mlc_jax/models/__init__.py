"""Models: backbones by family (models/families.py: VGG11-19 (+BN) with Keras layer names,
ResNet-50/101, EfficientNet-Lite0), the multi-label head, weight files, ImageNet classes.

Nothing here knows a dataset or a training stage.
"""
from mlc_jax.models.efficientnet_lite import EfficientNetLite
from mlc_jax.models.head import Head
from mlc_jax.models.classifiers import file_classifier, imagenet_classifier, imagenet_vgg
from mlc_jax.models.model import (SAVED, MultiLabelModel, activation, build_backbone, build_model,
                                  flat_params, forward, preprocessing_of, probabilities)
from mlc_jax.models.pretrained import keras_layers, load_backbone_weights, weights_path
from mlc_jax.models.resnet import ResNet
from mlc_jax.models.vgg import VGG

__all__ = ["MultiLabelModel", "VGG", "ResNet", "EfficientNetLite", "Head", "SAVED", "activation",
           "build_backbone", "build_model", "file_classifier", "flat_params", "forward",
           "imagenet_classifier", "imagenet_vgg", "keras_layers", "load_backbone_weights",
           "preprocessing_of", "probabilities", "weights_path"]
