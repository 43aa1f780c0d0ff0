"""What an EMA of the weights (finetune.ema_decay) costs per epoch: the step with and without it,
and the second validation pass it adds, measured in the same run.

  python benchmarks/ema.py [--size 64] [--width 0.125] [--batch 16] [--train 6000] [--val 500]
                           [--steps 10] [--rounds 5] [--unfreeze all]

The demo's model by default (VGG16 at 1/8 width with batch norm, 64 px, batches of 16, every
block training): the package's finetune step (benchmarks/common.finetune_step) with ema_decay 0
and 0.9997, timed in --rounds alternating rounds of --steps steps after a compiled warm-up (best round
of each); and one validation pass of
--val images (the stage's eval step), which an EMA run makes twice per epoch. Epoch cost =
(--train / batch) steps + validation passes; the table gives each side's epoch seconds and the
ratio (> 1: the EMA epoch takes longer).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402


def _config(args, ema_decay):
  from mlc_jax import config as config_lib
  c = config_lib.get_config()
  c.image_size, c.model.width, c.model.weights = args.size, args.width, ""
  c.model.batch_norm, c.model.pooling, c.head.hidden = True, "avg", (256,)
  c.finetune.update(unfreeze_blocks=args.unfreeze, ema_decay=ema_decay)
  return c


def prepare(args, ema_decay):
  """A compiled finetune step with this ema_decay -> (run(n): seconds per step over n steps,
  validation(): seconds of one validation pass of --val images)."""
  import jax
  from flax import nnx

  from mlc_jax import models, parallel
  c = _config(args, ema_decay)
  mesh = parallel.mesh()
  model = models.build_model(c, 8, rngs=nnx.Rngs(0))
  p = common.finetune_step(c, model, mesh, args.unfreeze, steps_per_epoch=args.train // args.batch)
  batch = parallel.shard_batch(common.image_batch(args.batch, args.size, classes=8), mesh)
  box = {"state": common.run_steps(p, p.state, batch, 2), "done": 2}  # compiled and warm
  jax.block_until_ready(box["state"].loss_sum)

  def run(n):
    start = time.perf_counter()
    box["state"] = common.run_steps(p, box["state"], batch, n, first=box["done"])
    jax.block_until_ready(box["state"].loss_sum)
    box["done"] += n
    return (time.perf_counter() - start) / n

  val = parallel.shard_batch(common.image_batch(250, args.size, classes=8), mesh)
  jax.block_until_ready(p.eval_step(box["state"], p.frozen, val))  # compile

  def validation():
    start = time.perf_counter()
    for _ in range(max(1, args.val // 250)):
      jax.block_until_ready(p.eval_step(box["state"], p.frozen, val))
    return time.perf_counter() - start

  return run, validation


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--train", type=int, default=6000)
  parser.add_argument("--val", type=int, default=500)
  parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
  parser.add_argument("--rounds", type=int, default=5, help="rounds; the two sides take turns")
  parser.add_argument("--unfreeze", default="all")
  args = parser.parse_args()
  plain, ema = prepare(args, 0.0), prepare(args, 0.9997)
  # the sides take turns, best round of each: load on this shared machine hits both alike
  plain_step = ema_step = val = float("inf")
  for _ in range(args.rounds):
    plain_step, ema_step = min(plain_step, plain[0](args.steps)), min(ema_step, ema[0](args.steps))
    val = min(val, plain[1]())
  spe = args.train // args.batch
  plain_epoch, ema_epoch = spe * plain_step + val, spe * ema_step + 2 * val
  rows = [common.row("EMA step", ema_step * 1e3, plain_step * 1e3, "plain step", unit="ms"),
          common.row("EMA epoch", ema_epoch, plain_epoch, "plain epoch", unit="s")]
  common.print_table(f"EMA cost ({common.machine()}; {args.size} px, width {args.width:g}, "
                     f"batch {args.batch}, {spe} steps + validation of {args.val} images; "
                     "ratio > 1 = EMA slower)", rows)
  print(f"EMA adds {100 * (ema_epoch / plain_epoch - 1):.1f}% to an epoch: "
        f"{100 * spe * (ema_step - plain_step) / plain_epoch:.1f}% in the steps, "
        f"{100 * val / plain_epoch:.1f}% for the second validation pass")
  common.emit("ema", rows)


if __name__ == "__main__":
  main()
