"""One model from two datasets with different label sets vs one model per dataset, and the loss's
two ways with the labels a dataset does not annotate (loss.unknown = ignore | negative).

  .venv/bin/python benchmarks/mixture.py [--weights=PRETRAINED.h5] [--train=1500] [--seeds=1]

Two `shapes`-style folder datasets drawn here (mlc_jax.data.datasets.shapes_draw.render: 1-4 of
8 shapes per image, 64 px, each dataset its own images): `left` annotates shapes 0-5, `right`
shapes 2-7, so they share 4 labels and each has 2 the other never annotates, although its images
contain them (a left image with a star has it unlabelled: unknown, not absent). Four runs of the
demo's features -> head recipe (configs/shapes_demo.py; the backbone given by --weights, e.g. the file
`make demo` pretrains, else a random one) on the same images: left alone, right alone, and the
mixture left+right with loss.unknown='ignore' and 'negative'. Each dataset's test split is scored
on its own labels (for the mixture: eval/test/sources/NAME, the mixture's per-part evaluation).
No hyperparameter is chosen here: every run uses the demo's recipe as it is.
"""
import argparse
import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`

import ml_collections  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import common  # noqa: E402
from mlc_jax.data.datasets import shapes_draw  # noqa: E402

ANNOTATES = {"left": range(0, 6), "right": range(2, 8)}


def write_folder(root, name, seed, counts, size):
  """A folder dataset: PNGs and labels.csv listing the shapes its labels cover."""
  root.mkdir(parents=True)
  names = [shapes_draw.CLASSES[i] for i in ANNOTATES[name]]
  (root / "labels.txt").write_text("\n".join(names) + "\n")
  rows = ["filename,labels,split"]
  for split, n in zip(shapes_draw.SPLITS, counts):
    for i in range(n):
      image, classes = shapes_draw.render(seed, split, i, size)
      Image.fromarray(image).save(root / f"{split}{i}.png")
      kept = [shapes_draw.CLASSES[c] for c in classes if c in ANNOTATES[name]]
      rows.append(f"{split}{i}.png,{' '.join(kept)},{split}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")


def run(tmp, name, dataset, sources, weights, seed, unknown="ignore"):
  from configs import shapes_demo as demo
  from mlc_jax import runner
  c = demo.get_config()
  c.dataset, c.model.weights, c.seed = dataset, weights, seed
  c.stages = ("features", "head", "evaluate")
  c.data.data_dir = str(tmp / "tfds")
  c.data.keep_unlabeled = True  # an image with none of a dataset's shapes is all-negative there
  c.loss.unknown, c.eval.head_alone, c.eval.examples = unknown, False, 0
  for alias, folder in sources.items():
    if "+" in dataset:
      c.data.sources[alias] = ml_collections.ConfigDict({"manual_dir": str(folder)})
    else:
      c.data.manual_dir = str(folder)
  workdir = tmp / name
  runner.train_and_evaluate(c, str(workdir))
  test = workdir / "eval" / "test"
  if "+" not in dataset:
    return {next(iter(sources)): json.loads((test / "metrics.json").read_text())["metrics"]["mAP"]}
  return {a: json.loads((test / "sources" / a / "metrics.json").read_text())["metrics"]["mAP"]
          for a in sources}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--weights", default="")
  parser.add_argument("--train", type=int, default=1500)
  parser.add_argument("--seeds", type=int, default=1)
  args = parser.parse_args()
  counts = (args.train, args.train // 5, args.train // 2)
  results = {k: {"left": [], "right": []} for k in ("alone", "ignore", "negative")}
  with tempfile.TemporaryDirectory() as t:
    tmp = pathlib.Path(t)
    folders = {"left": tmp / "left", "right": tmp / "right"}
    write_folder(folders["left"], "left", 1, counts, 64)
    write_folder(folders["right"], "right", 2, counts, 64)
    for seed in range(args.seeds):
      for side in ("left", "right"):
        got = run(tmp, f"{side}{seed}", "folder", {side: folders[side]}, args.weights, seed)
        results["alone"][side].append(got[side])
      for unknown in ("ignore", "negative"):
        got = run(tmp, f"mix_{unknown}{seed}", "left=folder+right=folder", folders, args.weights,
                  seed, unknown)
        for side in ("left", "right"):
          results[unknown][side].append(got[side])
  mean = lambda v: sum(v) / len(v)
  print(f"test mAP on each dataset's own labels ({args.train} training images each, "
        f"{args.seeds} seed(s), backbone {args.weights or 'random'}):")
  print("| model | left (shapes 0-5) | right (shapes 2-7) |  (mean, [min, max] over seeds)")
  print("|---|---|---|")
  cell = lambda v: f"{mean(v):.4f} [{min(v):.4f}, {max(v):.4f}]"
  for key, title in (("alone", "one model per dataset"),
                     ("ignore", "one model from both, unknown ignored"),
                     ("negative", "one model from both, unknown as negative")):
    print(f"| {title} | {cell(results[key]['left'])} | {cell(results[key]['right'])} |")
  rows = [common.row(f"mixture ({u}) on {s}", mean(results[u][s]), mean(results["alone"][s]),
                     f"{s} alone", unit="test mAP")
          for u in ("ignore", "negative") for s in ("left", "right")]
  common.print_table("ratios (higher: the mixture model is better):", rows)
  common.emit("mixture", rows, seeds=args.seeds, train=args.train, weights=args.weights)


if __name__ == "__main__":
  main()
