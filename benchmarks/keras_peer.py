"""Keras side of benchmarks/train_step.py, run in its own interpreter (no mlc_jax imported).

  .venv/bin/python benchmarks/keras_peer.py

Its own process so that Keras runs as a Keras user runs it, without the settings mlc_jax's entry
points make for their process (parallel.setup_process: glibc's malloc kept to one arena, XLA's
flags). It answers benchmarks/peer_protocol.py's commands; its setup takes
  {"size": 224, "batch": 4, "unfreeze": "1"|"all"|"infer", "classes": 20, "blocks": 5,
   "arch": "vgg16", "width": 1.0, "dtype": "float32"} and answers with Keras's version.
The model is train_step.py's: keras.applications' VGG16 (or ResNet50/101), headless, average
pooling (VGG16 with blocks < 5: tapped at block{blocks}_pool, then averaged), head
fc1024-ReLU-dropout 0.5-fc(classes); conv blocks below the top `unfreeze` ones frozen; SGD lr 1e-4
momentum 0.9, BCE with logits (dtype bfloat16: the mixed_bfloat16 policy, float32 variables and
logits), compiled with jit_compile=False (TensorFlow's oneDNN kernels, its
fastest CPU path): `train_on_batch`, or `predict_on_batch` for "infer".
"""
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def random_batch(size, n, classes, seed=0):
  """The benchmark's random batch (every side trains on the same one): uint8 images, multi-hot."""
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          (rng.random((n, classes)) < 0.1).astype(np.float32))


def setup(size, batch, unfreeze, classes=20, blocks=5, arch="vgg16", width=1.0, dtype="float32"):
  """The Keras model, freezing and optimizer -> a step callable."""
  import keras
  keras.mixed_precision.set_global_policy({"float32": "float32",
                                           "bfloat16": "mixed_bfloat16"}[dtype])
  if width != 1.0:
    raise SystemExit("the Keras side builds keras.applications' models, width 1.0 only")
  build = {"vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50,
           "resnet101": keras.applications.ResNet101}[arch]
  base = build(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
  if blocks < 5:  # tapped below block `blocks` (VGG: its pool), then average-pooled
    if arch != "vgg16":
      raise SystemExit("--blocks below 5: VGG16 only")
    tap = keras.layers.GlobalAveragePooling2D()(base.get_layer(f"block{blocks}_pool").output)
    base = keras.Model(base.input, tap)
  top = 0 if unfreeze in ("all", "infer") else blocks - int(unfreeze)  # blocks above `top` train
  for layer in base.layers:
    block = layer.name.split("_")[0]  # VGG: block{b}; ResNet: conv{b} (conv1 = the stem, block 1)
    if block.startswith(("block", "conv")):
      layer.trainable = int(block[-1]) > top
  x = keras.layers.Dense(1024, activation="relu", name="fc1")(base.output)
  x = keras.layers.Dropout(0.5)(x)
  out = keras.layers.Dense(classes, name="predictions", dtype="float32")(x)  # float32 logits
  model = keras.Model(base.input, out)
  model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9),
                loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=False)
  images, labels = random_batch(size, batch, classes)
  images = keras.applications.vgg16.preprocess_input(images.astype(np.float32))  # caffe, as ResNet
  if unfreeze == "infer":
    return lambda: model.predict_on_batch(images)
  return lambda: model.train_on_batch(images, labels)


def main():
  def info():
    import keras
    return {"version": keras.__version__}

  import peer_protocol  # benchmarks/, this script's folder (train_step.py imports this module too)
  peer_protocol.serve(setup, info)


if __name__ == "__main__":
  main()
