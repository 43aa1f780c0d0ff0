"""Data parallelism: the package's fine-tune step on 1 vs 4 (fake) host devices, same batch.

  .venv/bin/python benchmarks/devices.py [--devices 4] [--batch 32] [--size 64] [--width 0.125]
                                         [--steps 4] [--unfreeze all]

Each side is a fresh process (XLA_FLAGS=--xla_force_host_platform_device_count=N): the same
model, initial state and batches go through mlc_jax.steps.make_finetune_step on a mesh over its N
devices (the global batch split N ways). On one CPU the N fake devices share the same cores, so
this measures what sharding costs (partitioning, collectives, smaller per-device kernels), not a
speed-up; on N real accelerators the same code divides the batch. The losses are compared too.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def worker(args):
  """One side: steps/s of the finetune step over all devices of this process."""
  import jax
  import numpy as np
  from flax import nnx

  from configs import default
  from mlc_jax import models, optim, sharding, steps, losses
  from mlc_jax.data import augment
  c = default.get_config()
  c.image_size, c.model.width, c.model.weights, c.model.batch_norm = args.size, args.width, "", True
  model = models.build_model(c, 20, rngs=nnx.Rngs(0))
  graphdef, trainable, stats, frozen = nnx.split(
      model, optim.trainable_filter(args.unfreeze, False), nnx.BatchStat, ...)
  mesh = sharding.mesh()
  tx = optim.make(c.finetune, 100)
  step = steps.make_finetune_step(mesh, graphdef, tx, losses.bce,
                                  lambda x, k: augment.augment(x, k, c.augment))
  trainable, stats, frozen = (sharding.replicate(s, mesh) for s in (trainable, stats, frozen))
  opt_state = jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(trainable)
  sums, key = sharding.replicate(steps.zero_sums(), mesh), jax.random.PRNGKey(0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8),
           "labels": (rng.random((args.batch, 20)) < 0.1).astype(np.float32),
           "mask": np.ones(args.batch, bool)}
  device_batch = sharding.shard_batch(batch, mesh)
  start = time.perf_counter()
  trainable, stats, opt_state, sums = step(trainable, stats, frozen, opt_state, sums, device_batch,
                                           key, 0)
  jax.block_until_ready(sums)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for i in range(1, args.steps + 1):
    trainable, stats, opt_state, sums = step(trainable, stats, frozen, opt_state, sums,
                                             device_batch, key, i)
  jax.block_until_ready(sums)
  seconds = time.perf_counter() - start
  print(json.dumps({"devices": jax.device_count(),
                    "images_per_s": args.batch * args.steps / seconds,
                    "compile_s": compile_s, "loss_sum": float(sums["loss_sum"])}))


def side(args, devices):
  """Runs the worker in a fresh process with `devices` fake host devices -> its JSON."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--size", str(args.size),
         "--width", str(args.width), "--steps", str(args.steps), "--unfreeze", args.unfreeze]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise SystemExit(f"{devices}-device worker failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  """Prints the table and the JSON line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=4)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--unfreeze", default="all")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args)
  one, many = side(args, 1), side(args, args.devices)
  what = (f"finetune step VGG16 width {args.width:g} {args.size}px batch {args.batch} "
          f"unfreeze {args.unfreeze}")
  rows = [common.row(f"{what}, {args.devices} fake devices", many["images_per_s"],
                     one["images_per_s"], "1 device")]
  common.print_table(f"{args.devices} vs 1 host devices (same cores), {args.steps} steps; compile "
                     f"{many['compile_s']:.1f}s vs {one['compile_s']:.1f}s; loss after the steps "
                     f"{many['loss_sum']:.6f} vs {one['loss_sum']:.6f}", rows)
  common.emit("devices", rows, loss_sums=[one["loss_sum"], many["loss_sum"]],
              compile_s=[one["compile_s"], many["compile_s"]])


if __name__ == "__main__":
  main()
