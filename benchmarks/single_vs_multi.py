"""The proposal's question: a multi-label (sigmoid, BCE) head vs a single-label (softmax, CE on the
normalised multi-hot) head, at top-k, trained on the same cached bottleneck features.

Run: .venv/bin/python benchmarks/single_vs_multi.py [--workdir runs/demo] [--out runs/single_vs_multi]
     [--epochs 20] [--train 4000]
Features: the backbone of a trained workdir (--workdir, e.g. after `make demo`: its fine-tuned
backbone), else configs/shapes_demo.py's backbone as built (random: a weak but equal footing for both).
Both heads start from the same initial parameters and see the same batches (the project's head
stage: mlc_jax.train.loop.prepare of the head Stage on mlc_jax.train.features.Feed batches, its
optimizer and losses; benchmarks/common.head_step); the table prints the test metrics of each
for k = 1, 3, 5 (exactly k labels per image) and the ratio softmax / sigmoid.
"""
import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import common  # noqa: E402
from mlc_jax import config as config_lib, metrics, models, parallel  # noqa: E402
from mlc_jax.data import registry  # noqa: E402
from mlc_jax.train import features  # noqa: E402

KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def backbone_and_config(args):
  """(config, backbone): a trained workdir's, or the demo config's freshly built one."""
  if args.workdir:
    from mlc_jax import restore
    restored = restore.restore_model(args.workdir, which="best")
    return restored.config, restored.model.backbone
  from configs import shapes_demo as demo
  config = demo.get_config()
  if args.train:
    config.data.shapes_train = args.train
  return config, models.build_backbone(config)


def train_head(config, backbone, cache, num_classes, activation, epochs, mesh):
  """Trains a Head on cached features with the project's head step; returns test scores (N, C)."""
  head = models.Head(cache["train"][0].shape[1], num_classes, hidden=config.head.hidden,
                     dropout=config.head.dropout, rngs=nnx.Rngs(int(config.seed)))
  model = models.MultiLabelModel(backbone, head)
  feed = features.Feed(*cache["train"], batch_size=config.head.batch_size, train=True,
                       seed=config.seed)
  p = common.head_step(config, model, mesh, activation=activation,
                       steps_per_epoch=feed.steps_per_epoch)
  state, key, n = p.state, jax.random.PRNGKey(int(config.seed)), 0
  for epoch in range(epochs):
    for batch in feed.epoch(epoch):
      state = p.train_step(state, p.frozen, parallel.shard_batch(batch, mesh), key, n)
      n += 1
  nnx.update(model, state.trainable)
  test_x = np.asarray(cache["test"][0])
  return np.asarray(models.activation(model.head(test_x, train=False), activation))


def main(argv=None):
  """Prints the side-by-side top-k table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="", help="trained workdir whose backbone makes the features")
  parser.add_argument("--out", default="runs/single_vs_multi", help="where the feature cache goes")
  parser.add_argument("--epochs", type=int, default=0, help="head epochs (0 = config.head.epochs)")
  parser.add_argument("--train", type=int, default=0, help="demo: training images (0 = demo's)")
  args = parser.parse_args(argv)
  config, backbone = backbone_and_config(args)
  source = registry.get(config)
  mesh = parallel.mesh()
  start = time.time()
  cache = features.load(features.ensure(config, args.out, source, backbone, mesh,
                                        config_lib.eval_batch_size(config, mesh)))
  print(f"features: {config.dataset}, {source.num_examples}, {time.time() - start:.0f}s")
  epochs = args.epochs or int(config.head.epochs)
  y = np.asarray(cache["test"][1])
  results = {}
  for activation in ("sigmoid", "softmax"):
    start = time.time()
    scores = train_head(config, backbone, cache, len(source.labels), activation, epochs, mesh)
    results[activation] = {k: metrics.compute(scores, y, k=k) for k in (1, 3, 5)}
    print(f"{activation} head: {epochs} epochs, {time.time() - start:.0f}s")
  labels_per_image = y.sum(1).mean()
  print(f"\ntest split: {len(y)} images, {y.shape[1]} classes, {labels_per_image:.2f} labels per image")
  print("| k | metric | sigmoid (multi-label) | softmax (single-label) | softmax / sigmoid |")
  print("|---|---|---|---|---|")
  for k in (1, 3, 5):
    for key in KEYS:
      a, b = results["sigmoid"][k][f"{key}_top{k}"], results["softmax"][k][f"{key}_top{k}"]
      print(f"| {k} | {key} | {100 * a:.2f} | {100 * b:.2f} | {b / a if a else float('nan'):.3f} |")
  a, b = results["sigmoid"][3]["mAP"], results["softmax"][3]["mAP"]
  print(f"| - | mAP | {100 * a:.2f} | {100 * b:.2f} | {b / a if a else float('nan'):.3f} |")


if __name__ == "__main__":
  main()
