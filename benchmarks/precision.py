"""bf16 vs float32: the package's fine-tune step and inference forward, same model, batch and start.

  .venv/bin/python benchmarks/precision.py [--batch 32] [--size 64] [--width 0.125] [--steps 4]
                                           [--unfreeze all]

config.dtype='bfloat16' runs convolutions and matmuls in bf16 with float32 parameters, optimizer
state and loss (tests/integration/test_bf16.py checks that). On accelerators with bf16 units
(TPU, NVIDIA tensor cores) this is the fast path; on a CPU with AVX512-BF16 or AMX so it is with
the oneDNN convolutions (mlc_jax/ops/conv.py: VGG16 at width 1 ran 1.7-2.0x float32 on Zen 4,
BENCHMARKS.md), while XLA:CPU's own convolutions convert (expect a ratio near or below 1, as
with MLC_JAX_ONEDNN=0). The losses after the steps are printed side by side (the accuracy cost).
"""
import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def measure(args, dtype):
  """(train images/s, inference images/s, loss after the steps) for one compute dtype."""
  import jax
  from flax import nnx

  from configs import default
  from mlc_jax import models, parallel
  c = default.get_config()
  c.image_size, c.model.width, c.model.weights, c.dtype = args.size, args.width, "", dtype
  model = models.build_model(c, 20, rngs=nnx.Rngs(0))
  mesh = parallel.mesh()
  predict, state = common.forward(model, mesh)
  p = common.finetune_step(c, model, mesh, args.unfreeze)
  batch = parallel.shard_batch(common.image_batch(args.batch, args.size), mesh)
  jax.block_until_ready(predict(state, batch["image"]))
  t_predict, _ = common.best_of(lambda: jax.block_until_ready(predict(state, batch["image"])),
                                args.steps)
  train = common.run_steps(p, p.state, batch, 1)
  jax.block_until_ready(train.loss_sum)
  start = time.perf_counter()
  train = common.run_steps(p, train, batch, args.steps, first=1)
  jax.block_until_ready(train.loss_sum)
  t_step = (time.perf_counter() - start) / args.steps
  return args.batch / t_step, args.batch / t_predict, float(train.loss_sum) / (args.steps + 1)


def main(argv=None):
  """Prints the table and the JSON line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--unfreeze", default="all")
  args = parser.parse_args(argv)
  import jax
  f32 = measure(args, "float32")
  bf16 = measure(args, "bfloat16")
  platform = jax.devices()[0].platform
  what = f"VGG16 width {args.width:g} {args.size}px batch {args.batch} ({platform})"
  rows = [common.row(f"finetune step bf16, unfreeze {args.unfreeze}, {what}", bf16[0], f32[0],
                     "float32"),
          common.row(f"inference bf16, {what}", bf16[1], f32[1], "float32")]
  common.print_table(f"bf16 vs float32; mean training loss over {args.steps + 1} steps: "
                     f"bf16 {bf16[2]:.5f}, float32 {f32[2]:.5f}", rows)
  common.emit("precision", rows, mean_loss={"bfloat16": bf16[2], "float32": f32[2]})


if __name__ == "__main__":
  main()
