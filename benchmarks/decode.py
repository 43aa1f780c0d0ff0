"""The pipeline's JPEG decode (accurate integer DCT, Pillow's pixels) against TensorFlow's default.

  .venv/bin/python benchmarks/decode.py [--images=200] [--rounds=5]

Decodes and resizes VOC-size JPEGs (500 x 375, photo-like) to 224 in a one-thread tf.data map,
exactly as mlc_jax.data.pipeline does, with mlc_jax.data.pixels.decode (tf.cond over is_jpeg,
dct_method=INTEGER_ACCURATE) and with the former tf.io.decode_image (INTEGER_FAST), sides
alternating; prints images/s of each, best of the rounds, and the ratio.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402

from benchmarks.input_pipeline import make_jpegs  # noqa: E402
from mlc_jax.data import pixels as images  # noqa: E402


def fast_decode(data):
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def rate(decode, jpegs):
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  ds = tf.data.Dataset.from_tensor_slices(jpegs).with_options(options)
  ds = ds.map(lambda b: images.resize(decode(b), 224), num_parallel_calls=1)
  start = time.perf_counter()
  for _ in ds:
    pass
  return len(jpegs) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=200)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  jpegs = make_jpegs(args.images)
  best = {"accurate": 0.0, "fast": 0.0}
  for _ in range(args.rounds):
    best["accurate"] = max(best["accurate"], rate(images.decode, jpegs))
    best["fast"] = max(best["fast"], rate(fast_decode, jpegs))
  print(f"decode+resize, one thread, {args.images} JPEGs 500x375 -> 224, best of {args.rounds}:")
  print(f"  accurate DCT (mlc_jax)  {best['accurate']:7.1f} images/s")
  print(f"  fast DCT (TF default)   {best['fast']:7.1f} images/s")
  print(f"  ratio accurate/fast     {best['accurate'] / best['fast']:.3f}")


if __name__ == "__main__":
  main()
