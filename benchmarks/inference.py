"""Inference images/s: mlc_jax Classifier.predict vs Keras 3 (TensorFlow) `predict`, VGG16 224 px,
and the same model exported to ONNX (Classifier.export(format='onnx')) run by onnxruntime.

  .venv/bin/python benchmarks/inference.py [--batch 8] [--batches 2] [--width 1.0] [--repeats 2]

Ours is mlc_jax.inference.classifier.Classifier. Both sides run the full ImageNet VGG16 (fc1,
fc2, 1000-way softmax) with the SAME weights (ours, randomly initialised, copied into
keras.applications.VGG16 layer by layer: the Keras names are ours) on the same uint8 224 px
batch; Keras gets keras.applications.vgg16.preprocess_input, as a Keras user would call it, our
model applies the same caffe preprocessing on device; the ONNX graph takes the uint8 batch and
does its own. The outputs are compared (max |probability difference|) so all three really compute
one function. onnxruntime runs on its CPU provider with its default threads.
"""
import argparse
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402


def ours(width):
  """Our VGG16 ImageNet classifier (random weights) -> Classifier."""
  from flax import nnx

  from mlc_jax.inference.classifier import Classifier
  from mlc_jax.models import VGG
  model = VGG("vgg16", include_top=True, num_classes=1000, width=width, image_size=224,
              preprocessing="caffe", rngs=nnx.Rngs(0))
  return Classifier(model, [f"class{i}" for i in range(1000)], image_size=224,
                    activation="softmax")


def keras_twin(classifier, width):
  """keras.applications.VGG16 (no weight file) holding the classifier's weights."""
  import keras
  if width == 1.0:
    net = keras.applications.VGG16(weights=None, include_top=True, classes=1000)
  else:
    net = keras_vgg16_width(width)
  params = classifier.params
  for layer in net.layers:
    if layer.weights:
      layer.set_weights([params[f"{layer.name}/kernel"], params[f"{layer.name}/bias"]])
  return net


def keras_vgg16_width(width):
  """keras.applications' VGG16 graph at a channel width multiplier (for quick runs)."""
  import keras
  from keras import layers
  from mlc_jax.models.vgg import BLOCKS, BLOCK_CHANNELS, TOP_UNITS, scaled
  x = inputs = keras.Input((224, 224, 3))
  for b, n in enumerate(BLOCKS["vgg16"], 1):
    for i in range(1, n + 1):
      x = layers.Conv2D(scaled(BLOCK_CHANNELS[b - 1], width), 3, padding="same", activation="relu",
                        name=f"block{b}_conv{i}")(x)
    x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
  x = layers.Flatten(name="flatten")(x)
  x = layers.Dense(scaled(TOP_UNITS, width), activation="relu", name="fc1")(x)
  x = layers.Dense(scaled(TOP_UNITS, width), activation="relu", name="fc2")(x)
  x = layers.Dense(1000, activation="softmax", name="predictions")(x)
  return keras.Model(inputs, x)


def main(argv=None):
  """Prints the table and the JSON line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=2, help="batches per timed pass")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)
  import keras
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # the peer on the same (CPU) hardware as this run
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch * args.batches, 224, 224, 3), dtype=np.uint8)

  classifier = ours(args.width)
  net = keras_twin(classifier, args.width)
  preprocess = keras.applications.vgg16.preprocess_input
  run_ours = lambda: classifier.predict(images, batch_size=args.batch)
  run_keras = lambda: net.predict(preprocess(images.astype(np.float32)), batch_size=args.batch,
                                  verbose=0)
  import tempfile

  import onnxruntime
  with tempfile.TemporaryDirectory() as tmp:
    folder = classifier.export(pathlib.Path(tmp) / "onnx", format="onnx")
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
  run_onnx = lambda: np.concatenate([session.run(None, {"images": images[i:i + args.batch]})[0]
                                     for i in range(0, len(images), args.batch)])
  first_ours, p_ours = common.best_of(run_ours, 1)
  first_keras, p_keras = common.best_of(run_keras, 1)
  first_onnx, p_onnx = common.best_of(run_onnx, 1)
  t_ours, p_ours = common.best_of(run_ours, args.repeats)
  t_keras, p_keras = common.best_of(run_keras, args.repeats)
  t_onnx, p_onnx = common.best_of(run_onnx, args.repeats)
  diff = float(np.max(np.abs(p_ours - p_keras)))
  diff_onnx = float(np.max(np.abs(p_onnx - p_ours)))
  n = len(images)
  what = f"VGG16 224px width {args.width:g} batch {args.batch}"
  rows = [common.row(f"inference {what}", n / t_ours, n / t_keras, "Keras predict"),
          common.row(f"onnxruntime {what}", n / t_onnx, n / t_keras, "Keras predict"),
          common.row(f"onnxruntime {what}", n / t_onnx, n / t_ours, "our jitted predict")]
  common.print_table(f"inference images/s, {n} images, best of {args.repeats} "
                     f"(first calls: ours {first_ours:.1f}s, Keras {first_keras:.1f}s, "
                     f"onnxruntime {first_onnx:.1f}s; max |prob diff| vs Keras {diff:.1e}, "
                     f"onnxruntime vs ours {diff_onnx:.1e})", rows)
  common.emit("inference", rows, max_abs_prob_diff=diff, max_abs_prob_diff_onnx=diff_onnx,
              images=n)


if __name__ == "__main__":
  main()
