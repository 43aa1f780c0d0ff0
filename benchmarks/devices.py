"""Data parallelism: the package's fine-tune step on 1 vs 4 (fake) host devices, same batch;
then the same 4 devices with param_sharding='fsdp' against replicated parameters.

  .venv/bin/python benchmarks/devices.py [--devices 4] [--batch 32] [--size 64] [--width 0.125]
                                         [--steps 4] [--unfreeze all] [--fsdp_min_size 4096]

Each side is a fresh process (XLA_FLAGS=--xla_force_host_platform_device_count=N): the same
model, initial state and batches go through the package's finetune step (mlc_jax.train.loop.prepare
of the finetune Stage; benchmarks/common.finetune_step) on a mesh over its N devices (the global
batch split N ways), with parameters and optimizer state laid out by mlc_jax.train.state.layout.
On one CPU the N fake devices share the same cores, so this measures what sharding costs
(partitioning, collectives, smaller per-device kernels), not a speed-up; on N real accelerators
the same code divides the batch. The losses are compared too. Memory: the bytes
of parameters + optimizer state one device holds between steps, read off the placed arrays'
shards, for this model and (abstractly, from its shapes) for the full VGG16 with its top under
Adam; and the compiled step's per-device temporaries (XLA's memory analysis).
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
  from flax import nnx

  from configs import default
  from mlc_jax import models, parallel
  c = default.get_config()
  c.image_size, c.model.width, c.model.weights, c.model.batch_norm = args.size, args.width, "", True
  c.param_sharding, c.fsdp_min_size = args.param_sharding, args.fsdp_min_size
  model = models.build_model(c, 20, rngs=nnx.Rngs(0))
  mesh = parallel.mesh()
  p = common.finetune_step(c, model, mesh, args.unfreeze)
  held = sum(x.addressable_shards[0].data.nbytes
             for x in jax.tree.leaves((p.state.trainable, p.state.stats, p.frozen,
                                       p.state.opt_state)))
  key = jax.random.PRNGKey(0)
  device_batch = parallel.shard_batch(common.image_batch(args.batch, args.size), mesh)
  start = time.perf_counter()
  compiled = p.train_step.lower(p.state, p.frozen, device_batch, key, 0).compile()
  compile_s = time.perf_counter() - start
  temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", float("nan"))
  state = common.run_steps(p, p.state, device_batch, 1, key=key)
  jax.block_until_ready(state.loss_sum)
  start = time.perf_counter()
  state = common.run_steps(p, state, device_batch, args.steps, first=1, key=key)
  jax.block_until_ready(state.loss_sum)
  seconds = time.perf_counter() - start
  print(json.dumps({"devices": jax.device_count(),
                    "images_per_s": args.batch * args.steps / seconds,
                    "compile_s": compile_s, "loss_sum": float(state.loss_sum),
                    "state_bytes_per_device": held, "temp_bytes_per_device": temp,
                    "vgg16_state_bytes_per_device": full_vgg16_state_bytes(c, mesh)}))


def full_vgg16_state_bytes(config, mesh):
  """Bytes of parameters + Adam state one device holds for VGG16 with its top (224 px, 1000
  classes, every block trainable) under config.param_sharding, from shapes alone."""
  import jax
  import numpy as np
  from flax import nnx

  from mlc_jax import models, parallel
  from mlc_jax.train import optim
  c = config.copy_and_resolve_references()
  c.image_size, c.model.width, c.model.include_top, c.model.batch_norm = 224, 1.0, True, False
  c.fsdp_min_size = parallel.FSDP_MIN_SIZE
  c.finetune.optimizer = "adam"
  model = nnx.eval_shape(lambda: models.build_model(c, 1000, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  opt = jax.eval_shape(optim.make(c.finetune, 1).init, params)
  total = 0
  for tree in (params, opt):
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(parallel.state_shardings(tree, mesh, c))):
      total += int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
  return total


def side(args, devices, param_sharding="replicated"):
  """Runs the worker in a fresh process with `devices` fake host devices -> its JSON."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--size", str(args.size),
         "--width", str(args.width), "--steps", str(args.steps), "--unfreeze", args.unfreeze,
         "--param_sharding", param_sharding, "--fsdp_min_size", str(args.fsdp_min_size)]
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
  parser.add_argument("--fsdp_min_size", type=int, default=4096,
                      help="fsdp: smallest array split (the 1/8-width model's kernels are small)")
  parser.add_argument("--param_sharding", default="replicated", help=argparse.SUPPRESS)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args)
  one, many, fsdp = side(args, 1), side(args, args.devices), side(args, args.devices, "fsdp")
  what = (f"finetune step VGG16 width {args.width:g} {args.size}px batch {args.batch} "
          f"unfreeze {args.unfreeze}")
  n = args.devices
  mb = 2 ** 20
  rows = [common.row(f"{what}, {n} fake devices", many["images_per_s"], one["images_per_s"],
                     "1 device"),
          common.row(f"{what}, {n} fake devices, param_sharding=fsdp", fsdp["images_per_s"],
                     many["images_per_s"], "replicated"),
          common.row(f"parameters + optimizer state per device, this model, fsdp over {n} "
                     "(lower is better)", fsdp["state_bytes_per_device"] / mb,
                     many["state_bytes_per_device"] / mb, "replicated", unit="MiB"),
          common.row(f"parameters + Adam state per device, VGG16 with top (138M params), fsdp over "
                     f"{n} (lower is better)", fsdp["vgg16_state_bytes_per_device"] / mb,
                     many["vgg16_state_bytes_per_device"] / mb, "replicated", unit="MiB"),
          common.row(f"compiled step's temporaries per device, this model, fsdp over {n} "
                     "(lower is better)", fsdp["temp_bytes_per_device"] / mb,
                     many["temp_bytes_per_device"] / mb, "replicated", unit="MiB")]
  common.print_table(f"{n} vs 1 host devices (same cores), {args.steps} steps; compile "
                     f"{many['compile_s']:.1f}s vs {one['compile_s']:.1f}s (fsdp "
                     f"{fsdp['compile_s']:.1f}s); loss after the steps {one['loss_sum']:.6f} (1), "
                     f"{many['loss_sum']:.6f} ({n}), {fsdp['loss_sum']:.6f} ({n}, fsdp)", rows)
  common.emit("devices", rows, loss_sums=[one["loss_sum"], many["loss_sum"], fsdp["loss_sum"]],
              compile_s=[one["compile_s"], many["compile_s"], fsdp["compile_s"]])


if __name__ == "__main__":
  main()
