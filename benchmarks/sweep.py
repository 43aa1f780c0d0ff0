"""Trials per minute: a head-only sweep (one process, one shared feature cache) against the same
trials as separate `launch.py` runs, each of which starts Python and recomputes the features.

  .venv/bin/python benchmarks/sweep.py [--trials=4] [--weights=PRETRAINED.h5]

Both sides run configs/sweep_demo.py's data with stages (features, head), head.epochs=5 and the
same grid of head.learning_rate values (no pruning: the same work on both sides), in fresh folders
under a temporary directory; wall time from the start of the command to its end, so start-up
counts on both sides.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--trials", type=int, default=4)
  parser.add_argument("--weights", default="")
  args = parser.parse_args()
  rates = [1e-3 * 1.5 ** i for i in range(args.trials)]
  common = ["--config=configs/sweep_demo.py", "--config.stages=('features','head')",
            "--config.head.epochs=5", f"--config.model.weights={args.weights}"]
  with tempfile.TemporaryDirectory() as tmp:
    start = time.time()
    space = f"(('head.learning_rate', ('categorical', {tuple(rates)!r})),)"
    subprocess.run([sys.executable, "launch.py", "--mode=sweep", f"--workdir={tmp}/sweep", *common,
                    f"--config.sweep.space={space}", "--config.sweep.sampler=grid",
                    f"--config.sweep.n_trials={args.trials}", "--config.sweep.pruner=none"],
                   cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep_s = time.time() - start
    start = time.time()
    for i, lr in enumerate(rates):
      subprocess.run([sys.executable, "launch.py", f"--workdir={tmp}/run{i}", *common,
                      f"--config.head.learning_rate={lr}"], cwd=ROOT, check=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs_s = time.time() - start
  print(f"{args.trials} head-only trials, demo data (6,000 train images, 64 px):")
  print(f"  --mode=sweep (one process, features once)  {sweep_s:6.1f} s  "
        f"{60 * args.trials / sweep_s:5.2f} trials/min")
  print(f"  separate launch.py runs                     {runs_s:6.1f} s  "
        f"{60 * args.trials / runs_s:5.2f} trials/min")
  print(f"  ratio sweep/separate (trials per minute)    {runs_s / sweep_s:.2f}x")


if __name__ == "__main__":
  main()
