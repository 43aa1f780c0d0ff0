"""Fine-tune step images/s: mlc_jax's jitted step beside Keras 3 (TensorFlow backend), same run.

  python benchmarks/train_step.py [--sizes=224,112] [--batch=8] [--steps=3] [--unfreeze=1,all]
                                  [--width=1.0] [--onednn]

Both sides train the same model (VGG16 headless, average pooling, head fc1024-ReLU-dropout-fcC,
C=20), the same freezing (conv blocks below the top `unfreeze` ones frozen) and the same optimizer
(SGD lr 1e-4 momentum 0.9, BCE with logits) on the same random batch; neither augments. Keras
runs `train_on_batch` compiled with jit_compile=False (TensorFlow's oneDNN kernels, its fastest
CPU path); JAX runs the package's finetune step (mlc_jax.train.steps.train_step, jitted by
mlc_jax.train.loop.prepare; benchmarks/common.finetune_step). --onednn reruns the JAX side in a
child process with XLA_FLAGS=--xla_cpu_experimental_onednn_custom_call=true (XLA's oneDNN
convolutions) and adds its column. Prints one row per setting with both rates and the ratio
JAX / Keras (> 1 means JAX is faster).

Where the gap is (2 Zen 4 cores, batch 4, 224 px, measured per convolution): XLA:CPU's own
convolutions run at 150-210 GFLOP/s from 64 channels up (the 3-channel first layer at ~25);
its weight-gradient convolutions of the 224 and 112 px layers at 100-140. With the oneDNN custom
call, forward and input-gradient convolutions gain 10-20% but weight gradients lose ~40%, so the
`1` step gains ~6% and the `all` step loses ~11%; weight gradients written as matmuls (im2col, or
nine shifted products) were 2x slower than XLA's. Keras (TensorFlow's oneDNN kernels) keeps its
lead on this CPU; on a GPU the comparison is a different one (benchmarks/gpu.sh).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402

NUM_CLASSES = 20


def _batch(size, batch, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
          (rng.random((batch, NUM_CLASSES)) < 0.1).astype(np.float32))


def _rate(run_step, batch, steps):
  run_step()  # compile / build
  run_step()
  start = time.perf_counter()
  for _ in range(steps):
    run_step()
  return batch * steps / (time.perf_counter() - start)


def jax_rate(size, batch, steps, unfreeze, width):
  """Images/s of mlc_jax's finetune step (mlc_jax.train.loop.prepare of the finetune Stage)."""
  import jax

  from configs import default
  from mlc_jax import models, parallel
  c = default.get_config()
  c.image_size, c.model.width, c.model.weights = size, width, ""
  model = models.build_model(c, NUM_CLASSES)
  mesh = parallel.mesh()
  p = common.finetune_step(c, model, mesh, unfreeze, augment=False, steps_per_epoch=1)
  images, labels = _batch(size, batch)
  data = parallel.shard_batch({"image": images, "labels": labels, "mask": np.ones(batch, bool)},
                              mesh)
  key = jax.random.PRNGKey(0)
  box = {"state": p.state, "step": 0}

  def run_step():
    box["state"] = p.train_step(box["state"], p.frozen, data, key, box["step"])
    box["step"] += 1
    jax.block_until_ready(box["state"].loss_sum)

  return _rate(run_step, batch, steps)


def keras_rate(size, batch, steps, unfreeze, width):
  """Images/s of the same model, freezing and optimizer in Keras 3 on TensorFlow."""
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  import keras
  if width != 1.0:
    raise SystemExit("the Keras side builds keras.applications.VGG16, width 1.0 only")
  base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3),
                                  pooling="avg")
  top = 0 if unfreeze == "all" else 5 - int(unfreeze)  # blocks above `top` train
  for layer in base.layers:
    block = layer.name.split("_")[0]
    if block.startswith("block"):
      layer.trainable = int(block[5:]) > top
  x = keras.layers.Dense(1024, activation="relu", name="fc1")(base.output)
  x = keras.layers.Dropout(0.5)(x)
  out = keras.layers.Dense(NUM_CLASSES, name="predictions")(x)
  model = keras.Model(base.input, out)
  model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9),
                loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=False)
  images, labels = _batch(size, batch)
  images = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
  return _rate(lambda: model.train_on_batch(images, labels), batch, steps)


def _jax_child(args, size, unfreeze):
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                                    + " --xla_cpu_experimental_onednn_custom_call=true"))
  cmd = [sys.executable, __file__, "--child", f"--sizes={size}", f"--batch={args.batch}",
         f"--steps={args.steps}", f"--unfreeze={unfreeze}", f"--width={args.width}"]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])["jax"]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="224,112")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--unfreeze", default="1,all")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--onednn", action="store_true")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  unfreezes = args.unfreeze.split(",")
  if args.child:
    print(json.dumps({"jax": jax_rate(sizes[0], args.batch, args.steps, unfreezes[0], args.width)}))
    return
  import jax
  flags = os.environ.get("XLA_FLAGS", "")
  print(f"# {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} CPUs, "
        f"batch {args.batch}, {args.steps} timed steps, XLA_FLAGS={flags!r}")
  head = "| size | unfreeze | JAX img/s | Keras img/s | JAX/Keras |"
  if args.onednn:
    head += " JAX+oneDNN img/s | oneDNN/Keras |"
  print(head)
  print("|" + "---|" * (head.count("|") - 1))
  for size in sizes:
    for unfreeze in unfreezes:
      j = jax_rate(size, args.batch, args.steps, unfreeze, args.width)
      k = keras_rate(size, args.batch, args.steps, unfreeze, args.width)
      row = f"| {size} | {unfreeze} | {j:.2f} | {k:.2f} | {j / k:.2f}x |"
      if args.onednn:
        o = _jax_child(args, size, unfreeze)
        row += f" {o:.2f} | {o / k:.2f}x |"
      print(row, flush=True)


if __name__ == "__main__":
  main()
