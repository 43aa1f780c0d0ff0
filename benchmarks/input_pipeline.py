"""Input pipeline throughput against the fine-tune step it feeds, measured in the same run.

  .venv/bin/python benchmarks/input_pipeline.py [--width=0.125] [--batch=16] [--images=96]

Prints images/s for: host JPEG decode + resize to 224 on one core (tf.data, one thread, exactly
mlc_jax.data.pipeline's map), the same on all cores; device augmentation (mlc_jax.data.augment,
the default strengths, jitted); and the package's fine-tune step of a VGG16 at 224
(finetune.unfreeze_blocks=1: block5 + head train; mlc_jax.train.loop.prepare of the finetune
Stage, benchmarks/common.finetune_step). Then the ratio that matters: host cores needed to feed
one step = step images/s / decode images/s per core.
On a machine without an accelerator the step is measured at reduced width on the CPU, and the
GPU rate is estimated from FLOPs (--gpu_tflops: achieved, not peak) and printed as such.
"""
import argparse
import io
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import common  # noqa: E402
from configs import default  # noqa: E402
from mlc_jax import models, parallel  # noqa: E402
from mlc_jax.data import augment, pipeline  # noqa: E402
from mlc_jax.data.datasets import shapes_draw  # noqa: E402

VGG16_FORWARD_GFLOP = 15.5  # multiply-adds x 2 at 224 px, full width
BLOCK5_AND_HEAD_GFLOP = 1.4  # block5 (3 convs at 14x14x512) share of the forward pass


def make_jpegs(count, size=(500, 375)):
  """Photo-like JPEGs at VOC-ish size: shapes scenes upscaled, plus sensor-like noise."""
  out = []
  for i in range(count):
    array, _ = shapes_draw.render(0, "train", i, 96)
    im = Image.fromarray(array).resize(size, Image.BICUBIC)
    noisy = np.asarray(im, np.float32) + np.random.default_rng(i).normal(0, 4, (size[1], size[0], 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def host_rate(jpegs, threads, repeat=3):
  """Images/s of decode + resize(224) over tf.data with `threads` threads (None: one per core).

  Autotuning off and one decode per core, as mlc_jax.data.pipeline runs it.
  """
  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat(repeat)
  ds = ds.map(lambda b: pipeline.decode_and_resize(b, 224, "plain"),
              num_parallel_calls=threads or pipeline.DECODE_THREADS)
  options = tf.data.Options()
  options.autotune.enabled = False
  if threads:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options).batch(32)
  for _ in ds.take(2):  # warm-up: graph building, thread pools
    pass
  start, n = time.perf_counter(), 0
  for batch in ds:
    n += int(batch.shape[0])
  return n / (time.perf_counter() - start)


def timed(fn, *args, iters):
  """Seconds per call of an already compiled fn, blocking on its output."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / iters


def augment_rate(batch, iters):
  """Images/s of the default-strength augmentation, jitted, on the default device."""
  cfg = default.get_config().augment
  f = augment.make_augment(cfg)
  images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), np.uint8))
  return batch / timed(f, images, jax.random.key(0), iters=iters)


def step_rate(width, batch, iters, dtype):
  """Images/s of the package's fine-tune step (augment + forward + backward of block5 and head,
  unfreeze_blocks=1) on VGG16 at 224."""
  config = default.get_config()
  config.model.width, config.model.weights, config.dtype = width, "", dtype
  config.image_size = 224
  model = models.build_model(config, 80, rngs=nnx.Rngs(0))
  mesh = parallel.mesh()
  p = common.finetune_step(config, model, mesh, "1")
  device_batch = parallel.shard_batch(common.image_batch(batch, 224, classes=80), mesh)
  key, state = jax.random.key(0), [p.state, 0]

  def run():
    state[0] = p.train_step(state[0], p.frozen, device_batch, key, state[1])
    state[1] += 1
    return state[0].loss_sum

  return batch / timed(run, iters=iters)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=96, help="distinct JPEGs decoded (x3 passes)")
  parser.add_argument("--batch", type=int, default=0, help="step batch; 0 = 64 on GPU, 8 on CPU")
  parser.add_argument("--width", type=float, default=0.0, help="VGG width; 0 = 1.0 on GPU, 0.125 on CPU")
  parser.add_argument("--iters", type=int, default=0, help="timed steps; 0 = 20 on GPU, 3 on CPU")
  parser.add_argument("--dtype", default="", help="compute dtype; '' = bfloat16 on GPU, float32 on CPU")
  parser.add_argument("--gpu_tflops", type=float, default=100.0,
                      help="achieved bf16 TFLOP/s assumed for the GPU estimate (H200 dense peak ~790; VGG convs reach far less)")
  args = parser.parse_args()
  platform = jax.devices()[0].platform
  accelerated = platform in ("gpu", "tpu")
  batch = args.batch or (64 if accelerated else 8)
  width = args.width or (1.0 if accelerated else 0.125)
  iters = args.iters or (20 if accelerated else 3)
  dtype = args.dtype or ("bfloat16" if accelerated else "float32")
  cores = os.cpu_count()

  jpegs = make_jpegs(args.images)
  mean_kb = np.mean([len(j) for j in jpegs]) / 1024
  one_core = host_rate(jpegs, 1)
  all_cores = host_rate(jpegs, None)
  aug = augment_rate(batch, iters)
  step = step_rate(width, batch, iters, dtype)
  rows = [(f"host decode+resize 500x375 JPEG ({mean_kb:.0f} KB) -> 224, 1 core", one_core),
          (f"host decode+resize, all {cores} cores", all_cores),
          (f"device augmentation, batch {batch} ({platform})", aug),
          (f"fine-tune step VGG16 width {width:g} {dtype}, batch {batch} ({platform})", step)]
  print(f"{'what':72s} {'images/s':>10s}")
  for name, rate in rows:
    print(f"{name:72s} {rate:10.1f}")
  print(f"\nall-core / one-core decode: {all_cores / one_core:.2f}x on {cores} cores")
  print(f"augmentation time / step time: {step / aug:.3f}")
  print(f"host cores to feed this step: {step / one_core:.2f}")
  # Step FLOPs: a forward pass plus the backward of block5 and head (weights and inputs, ~2x).
  gflop = VGG16_FORWARD_GFLOP + 2 * BLOCK5_AND_HEAD_GFLOP
  if accelerated and width == 1.0:
    print(f"measured full-width step on {platform}: {step:.0f} images/s -> "
          f"{step / one_core:.1f} host cores per accelerator")
  else:
    estimate = args.gpu_tflops * 1e3 / gflop
    print(f"ESTIMATE (not measured): a full-width VGG16 fine-tune step at {args.gpu_tflops:g} "
          f"achieved TFLOP/s ({gflop:.1f} GFLOP/image) runs ~{estimate:.0f} images/s -> "
          f"~{estimate / one_core:.0f} host cores of this machine's speed per GPU")


if __name__ == "__main__":
  main()
