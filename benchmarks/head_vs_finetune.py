"""The bottleneck `head` epoch (cached features) vs the `finetune` epoch (images): real stages.

  .venv/bin/python benchmarks/head_vs_finetune.py [--train 512] [--size 64] [--width 0.125]
                                                  [--unfreeze 1] [--epochs 2] [--data_dir DIR]

Runs mlc_jax.runner.train_and_evaluate on the synthetic shapes set (configs/shapes_demo.py's model and
optimizers at the sizes given): first the `features` stage alone (the one-off cost the head
pays for), then `head` and `finetune`. The epoch times come from the workdir's metrics.jsonl
(`seconds`: the epoch's steps plus its validation); the last epoch of each stage is used, so
compilation is left out. Both stages see the same training images per epoch.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def config_for(args, data_dir):
  """configs/shapes_demo.py at the benchmark's sizes."""
  from configs import shapes_demo as demo
  c = demo.get_config()
  c.data.data_dir = data_dir
  c.data.shapes_train, c.data.shapes_val, c.data.shapes_test = args.train, args.train // 8, 32
  c.data.shapes_image_size = c.image_size = args.size
  c.model.width = args.width
  c.batch_size = c.head.batch_size = c.eval_batch_size = args.batch
  c.head.epochs = c.finetune.epochs = args.epochs
  c.finetune.unfreeze_blocks = args.unfreeze
  c.log_every_steps = 1000
  return c


def main(argv=None):
  """Prints the table and the JSON line."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train", type=int, default=512)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--unfreeze", default="1")
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--data_dir", default="", help="shapes data cache (default: a temp dir)")
  args = parser.parse_args(argv)
  from mlc_jax import runner
  with tempfile.TemporaryDirectory() as tmp:
    config = config_for(args, args.data_dir or str(pathlib.Path(tmp) / "data"))
    from mlc_jax.data import registry
    registry.get(config)  # generate the images outside the timed stages
    workdir = pathlib.Path(tmp) / "run"
    config.stages = ("features",)
    start = time.perf_counter()
    runner.train_and_evaluate(config, str(workdir))
    features_s = time.perf_counter() - start
    config.stages = ("head", "finetune")
    runner.train_and_evaluate(config, str(workdir))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  last = {r["stage"]: r for r in rows}
  head_s, finetune_s = last["head"]["seconds"], last["finetune"]["seconds"]
  n = (args.train // args.batch) * args.batch
  table = [common.row(f"head epoch on cached features ({n} images + val)", n / head_s,
                      n / finetune_s, f"finetune epoch (unfreeze {args.unfreeze})")]
  common.print_table(f"epoch {args.epochs} of each stage, VGG16 width {args.width:g} {args.size}px "
                     f"batch {args.batch}; features stage (all splits, once): {features_s:.1f}s; "
                     f"head {head_s:.2f}s, finetune {finetune_s:.2f}s", table)
  common.emit("head_vs_finetune", table, features_s=features_s, head_epoch_s=head_s,
              finetune_epoch_s=finetune_s)


if __name__ == "__main__":
  main()
