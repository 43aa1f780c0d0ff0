"""Fine-tune step images/s and model FLOP utilisation on an accelerator (run by benchmarks/gpu.sh).

  python benchmarks/gpu_step.py [--batches 64,128,256] [--unfreeze 1,all] [--dtype bfloat16]
                                [--size 224] [--steps 20] [--peak_tflops 990]

The package's own step (mlc_jax.steps.make_finetune_step: on-device augmentation, VGG16 with
the default head, BCE, SGD momentum 0.9, freezing by unfreeze_blocks, donated state) on a uint8
batch already on the device, over every local device (a 'data' mesh). Per setting: images/s
(median-free: total time of --steps steps after a compiled warm-up step), the XLA cost-analysis
FLOPs of the compiled step per image, and
  MFU = images/s * 3 * 30.9e9 / (peak_tflops * 1e12)
(VGG16 forward: 15.47 GMAC = 30.9 GFLOP per 224 px image; a full training step ~3x that). MFU is
defined for the full step (unfreeze all); for partial unfreezing the hardware utilisation
(cost-analysis FLOPs * images/s / peak) is printed instead.
"""
import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

FORWARD_FLOP = 30.9e9  # VGG16 at 224 px, per image


def run(batch, unfreeze, args):
  """One setting -> dict of its measurements."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from configs import default
  from mlc_jax import losses, models, optim, sharding, steps
  from mlc_jax.data import augment
  c = default.get_config()
  c.image_size, c.model.weights, c.dtype, c.model.width = args.size, "", args.dtype, args.width
  model = models.build_model(c, args.classes, rngs=nnx.Rngs(0))
  mesh = sharding.mesh()
  graphdef, trainable, stats, frozen = nnx.split(
      model, optim.trainable_filter(unfreeze, False), nnx.BatchStat, ...)
  tx = optim.make(c.finetune, 1000)
  step = steps.make_finetune_step(mesh, graphdef, tx, losses.bce,
                                  lambda x, k: augment.augment(x, k, c.augment))
  trainable, stats, frozen = (sharding.replicate(s, mesh) for s in (trainable, stats, frozen))
  opt_state = jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(trainable)
  sums, key = sharding.replicate(steps.zero_sums(), mesh), jax.random.PRNGKey(0)
  data = sharding.data_sharding(mesh)
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  batch_arrays = {
      "image": jax.jit(lambda k: jax.random.randint(k, (batch, args.size, args.size, 3), 0, 256)
                       .astype(jnp.uint8), out_shardings=data)(k1),
      "labels": jax.jit(lambda k: (jax.random.uniform(k, (batch, args.classes)) < 0.1)
                        .astype(jnp.float32), out_shardings=data)(k2),
      "mask": jax.device_put(jnp.ones((batch,), bool), data)}
  start = time.perf_counter()
  compiled = step.lower(trainable, stats, frozen, opt_state, sums, batch_arrays, key, 0).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", float("nan")))
  # The compiled executable itself: calling `step` again could compile a second time.
  trainable, stats, opt_state, sums = compiled(trainable, stats, frozen, opt_state, sums,
                                               batch_arrays, key, 0)
  jax.block_until_ready(sums)
  start = time.perf_counter()
  for i in range(1, args.steps + 1):
    trainable, stats, opt_state, sums = compiled(trainable, stats, frozen, opt_state, sums,
                                                 batch_arrays, key, i)
  jax.block_until_ready(sums)
  seconds = time.perf_counter() - start
  rate = batch * args.steps / seconds
  peak = args.peak_tflops * 1e12
  return {"batch": batch, "unfreeze": unfreeze, "images_per_s": rate, "compile_s": compile_s,
          "xla_flops_per_image": flops / batch,
          "mfu": rate * 3 * FORWARD_FLOP / peak if unfreeze == "all" else None,
          "hardware_util": rate * flops / batch / peak,
          "loss": float(sums["loss_sum"]) / (args.steps + 1)}


def main(argv=None):
  """Prints one line per setting, then a JSON line with all of them."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="64,128,256")
  parser.add_argument("--unfreeze", default="1,all")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--classes", type=int, default=20)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--peak_tflops", type=float, default=990.0,
                      help="dense bf16 peak (H200: 990)")
  args = parser.parse_args(argv)
  import jax
  devices = jax.devices()
  print(f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}); "
        f"jax {jax.__version__}; {args.dtype}, {args.size}px, width {args.width:g}", flush=True)
  results = []
  print(f"{'unfreeze':>8s} {'batch':>6s} {'images/s':>10s} {'MFU':>7s} {'HW util':>8s} "
        f"{'XLA GFLOP/img':>14s} {'compile s':>10s}", flush=True)
  for unfreeze in args.unfreeze.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      try:
        r = run(batch, unfreeze, args)
      except Exception as e:  # e.g. out of memory at the largest batch: report it, keep going
        print(f"{unfreeze:>8s} {batch:6d} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        results.append({"batch": batch, "unfreeze": unfreeze, "error": str(e)[:500]})
        continue
      mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else f"{'-':>7s}"
      print(f"{unfreeze:>8s} {batch:6d} {r['images_per_s']:10.1f} {mfu} "
            f"{100 * r['hardware_util']:7.1f}% {r['xla_flops_per_image'] / 1e9:14.1f} "
            f"{r['compile_s']:10.1f}", flush=True)
      results.append(r)
  print(json.dumps({"benchmark": "gpu_step", "device": devices[0].device_kind,
                    "n_devices": len(devices), "dtype": args.dtype, "size": args.size,
                    "results": results}), flush=True)


if __name__ == "__main__":
  main()
