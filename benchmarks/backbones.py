"""Which backbone transfers best to the demo's real photographs: the demo's recipe per backbone.

  .venv/bin/python benchmarks/backbones.py [--archs vgg16,efficientnet_lite0] [--taps 4,5]
                                           [--lrs 1e-3,1e-2] [--workdir runs/bench_backbones]
                                           [--fashion_mnist /usr/share/datasets/fashion-mnist]

Each backbone runs configs/demo.py's recipe with its own ImageNet weights (vgg16: torchvision's,
`torchvision-vgg16`; efficientnet_lite0: its authors', `efficientnet-lite0`): bottleneck features
of the frozen backbone tapped below block `tap`, the head (fc1024-ReLU-dropout-fc10, RMSprop, 30
epochs), then the top block fine-tuned with SGD momentum 0.9 for 2 epochs at `lr`, on the same
1,500 / 300 / 1,000 collages. The same grid (tap x lr) is run for every backbone and each
backbone's setting is chosen by its best validation mAP; only then is its test row read, so the
test split decides nothing. Prints the validation grid, then one test row per backbone (mAP, top-3
CF1/OF1, the head alone) and a JSON line.
"""
import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

WEIGHTS = {"vgg16": "torchvision-vgg16", "efficientnet_lite0": "efficientnet-lite0"}


def config_for(arch, tap, lr, fashion_mnist):
  from configs import demo
  c = demo.get_config()
  c.model.arch, c.model.weights, c.model.blocks = arch, WEIGHTS[arch], int(tap)
  c.finetune.learning_rate = float(lr)
  c.data.manual_dir = fashion_mnist
  c.eval.examples = 0
  c.log_every_steps = 1000
  return c


def run(arch, tap, lr, args):
  """Trains and evaluates one setting (or reads a finished workdir) -> its figures."""
  from mlc_jax import runner
  workdir = pathlib.Path(args.workdir) / f"{arch}_tap{tap}_lr{lr}"
  start = time.time()
  runner.train_and_evaluate(config_for(arch, tap, lr, args.fashion_mnist), str(workdir))
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
  val = max(r["val_mAP"] for r in rows if r.get("stage") == "finetune")
  test = json.loads((workdir / "eval/test/metrics.json").read_text())["metrics"]
  head = json.loads((workdir / "eval/test/head/metrics.json").read_text())["metrics"]
  return {"arch": arch, "tap": int(tap), "lr": float(lr), "val_mAP": val,
          "test_mAP": test["mAP"], "test_CF1_top3": test["CF1_top3"],
          "test_OF1_top3": test["OF1_top3"], "head_test_mAP": head["mAP"],
          "seconds": round(time.time() - start, 1)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--archs", default="vgg16,efficientnet_lite0")
  p.add_argument("--taps", default="4,5")
  p.add_argument("--lrs", default="1e-3,1e-2")
  p.add_argument("--workdir", default="runs/bench_backbones")
  p.add_argument("--fashion_mnist", default="/usr/share/datasets/fashion-mnist")
  args = p.parse_args(argv)
  from mlc_jax import parallel
  parallel.setup_process()
  print(f"# {common.machine()}; demo recipe per backbone, grid taps {args.taps} x lrs {args.lrs}, "
        "chosen by validation mAP")
  print("| backbone | tap | fine-tune lr | val mAP | (test mAP, read after choosing) | seconds |")
  print("|---|---|---|---|---|---|", flush=True)
  results = []
  for arch in args.archs.split(","):
    for tap in args.taps.split(","):
      for lr in args.lrs.split(","):
        r = run(arch, tap, lr, args)
        results.append(r)
        print(f"| {arch} | {tap} | {lr} | {r['val_mAP']:.4f} | | {r['seconds']} |", flush=True)
  print("\n| backbone (chosen on val) | tap | lr | test mAP | CF1 top-3 | OF1 top-3 | head alone "
        "test mAP |")
  print("|---|---|---|---|---|---|---|")
  chosen = []
  for arch in args.archs.split(","):
    best = max((r for r in results if r["arch"] == arch), key=lambda r: r["val_mAP"])
    chosen.append(best)
    print(f"| {arch} | {best['tap']} | {best['lr']:g} | {best['test_mAP']:.4f} | "
          f"{100 * best['test_CF1_top3']:.2f} | {100 * best['test_OF1_top3']:.2f} | "
          f"{best['head_test_mAP']:.4f} |")
  print(json.dumps({"benchmark": "backbones", "machine": common.machine(), "grid": results,
                    "chosen": chosen}))


if __name__ == "__main__":
  main()
