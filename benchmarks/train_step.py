"""Fine-tune step and inference images/s: mlc_jax with its oneDNN convolutions, mlc_jax with
lax.conv, Keras 3 (TensorFlow) and optionally PyTorch, alternating in one run.

  python benchmarks/train_step.py [--sizes=224,112] [--batch=4] [--steps=2] [--rounds=3]
                                  [--unfreeze=1,all,infer] [--infer_batch=16] [--width=1.0]
                                  [--torch=.venv-torch/bin/python] [--arch=vgg16|resnet50|resnet101]
                                  [--blocks=5] [--dtype=float32|bfloat16]

Every side trains the same model (VGG16, or with --arch keras.applications' ResNet50/101 = our
model.resnet_layout='keras', headless, average pooling, head fc1024-ReLU-dropout-fcC,
C=20; --blocks=4 keeps VGG16's first 4 conv blocks, make demo's model), the same freezing (conv
blocks below the top `unfreeze` ones frozen) and the same optimizer (SGD lr 1e-4 momentum 0.9, BCE
with logits) on the same random batch; none augments. `infer` rows
time the forward pass alone (inference mode) at --infer_batch. Sides:
- oneDNN: the package's finetune step (mlc_jax.train.loop.prepare of the finetune stage,
  benchmarks/common.finetune_step) whose convolutions run mlc_jax/ops/conv.py's oneDNN primitives;
- lax: the same step traced inside ops.conv.lax_only(), i.e. XLA:CPU's own convolutions;
- Keras: benchmarks/keras_peer.py in a child process (Keras as its users run it, without this
  process's settings): `train_on_batch` compiled with jit_compile=False (TensorFlow's oneDNN
  kernels, its fastest CPU path); `predict_on_batch` for `infer`;
- PyTorch (where --torch names an interpreter with torch, default .venv-torch/bin/python if it
  exists; `make torch-peer` makes it): benchmarks/torch_peer.py in a child process, channels_last.
Each round times `steps` steps of every side in turn (after two warm-up steps each); a side's rate
is its best round, so a round slowed by another process on a shared machine does not decide.
Ratios > 1 mean the oneDNN side is faster. The two mlc_jax sides run as the package ships, under
parallel.setup_process's settings (benchmarks/common.py; glibc's malloc kept to one arena,
ops/host_memory.py); the peers run in their own processes without them. The `cpu s/img` column is the process CPU time per
image of the oneDNN side and of Keras (work done, whatever else the machine runs).

History (2 Zen 4 cores, batch 4, 224 px): XLA:CPU's own convolutions ran at 150-210 GFLOP/s and its
weight gradients at 100-140; XLA's --xla_cpu_experimental_onednn_custom_call made weight gradients
~40% slower and im2col matmuls were 2x slower, hence the op in mlc_jax/ops.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common, keras_peer  # noqa: E402

NUM_CLASSES = 20
TORCH_VENV = os.path.join(ROOT, ".venv-torch", "bin", "python")


def jax_side(size, batch, unfreeze, width, lax_only, arch="vgg16", blocks=5, dtype="float32"):
  """One step (or forward) of mlc_jax's model -> a callable running it to completion."""
  import contextlib

  import jax

  from configs import default
  from mlc_jax import models, parallel
  from mlc_jax.ops import conv
  c = default.get_config()
  c.image_size, c.model.width, c.model.weights = size, width, ""
  c.model.arch, c.model.resnet_layout, c.model.blocks = arch, "keras", blocks
  c.dtype = dtype
  model = models.build_model(c, NUM_CLASSES)
  mesh = parallel.mesh()
  images, labels = keras_peer.random_batch(size, batch, NUM_CLASSES)
  trace = conv.lax_only() if lax_only else contextlib.nullcontext()
  if unfreeze == "infer":
    data = parallel.shard_batch({"image": images}, mesh)["image"]
    with trace:  # asked for, traced and compiled here, under `trace` (models.forward keys on it)
      fn, state = common.forward(model, mesh)
      if ("mlc_onednn_conv" in fn.lower(state, data).as_text()) == lax_only:
        raise SystemExit(f"the {'lax' if lax_only else 'oneDNN'} side's forward runs the other's "
                         "convolutions")
      jax.block_until_ready(fn(state, data))
    return lambda: jax.block_until_ready(fn(state, data))
  p = common.finetune_step(c, model, mesh, unfreeze, augment=False, steps_per_epoch=1)
  data = parallel.shard_batch({"image": images, "labels": labels, "mask": np.ones(batch, bool)},
                              mesh)
  key = jax.random.PRNGKey(0)
  box = {"state": p.state, "step": 0}

  def run_step():
    box["state"] = p.train_step(box["state"], p.frozen, data, key, box["step"])
    box["step"] += 1
    jax.block_until_ready(box["state"].loss_sum)

  with trace:
    run_step()
  return run_step


class PeerSide:
  """A peer in its own interpreter (benchmarks/keras_peer.py, benchmarks/torch_peer.py), one
  setting at a time, over one JSON line each way."""

  def __init__(self, python, script, env=None):
    self.proc = subprocess.Popen([python, os.path.join(ROOT, "benchmarks", script)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)
    self.cpu = 0.0

  def ask(self, cmd):
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"{self.proc.args[1]} ended without answering {cmd}")
    return json.loads(line)

  def setup(self, **setting):
    self.info = self.ask({"setup": {**setting, "classes": NUM_CLASSES}})
    return self

  def timed(self, steps):
    out = self.ask({"run": steps})
    self.cpu = out["cpu"]
    return out["seconds"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def _timed(fn, steps):
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return time.perf_counter() - start


def measure(sides, batch, steps, rounds):
  """{side: (best images/s over rounds, CPU s per image in that round)}, sides alternating."""
  best = {name: (0.0, 0.0) for name in sides}
  for _ in range(rounds):
    for name, side in sides.items():
      cpu = time.process_time()
      seconds = side.timed(steps) if isinstance(side, PeerSide) else _timed(side, steps)
      cpu = side.cpu if isinstance(side, PeerSide) else time.process_time() - cpu
      rate = batch * steps / seconds
      if rate > best[name][0]:
        best[name] = (rate, cpu / (batch * steps))
  return best


def main():
  os.environ["MLC_JAX_ONEDNN"] = "1"  # its column is what this measures, whatever the environment
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="224,112")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--infer_batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--unfreeze", default="1,all,infer")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--arch", default="vgg16", help="vgg16, resnet50 or resnet101 (Keras layout)")
  p.add_argument("--blocks", type=int, default=5,
                 help="VGG16's conv blocks kept (model.blocks): 4 is make demo's model, tapped "
                      "at block4_pool (`--sizes=56 --blocks=4 --batch=32 --unfreeze=1` is its "
                      "fine-tune step)")
  p.add_argument("--dtype", default="float32",
                 help="compute dtype: bfloat16 is config.dtype='bfloat16' (float32 parameters), "
                      "Keras's mixed_bfloat16 policy and PyTorch's CPU autocast to bfloat16")
  p.add_argument("--torch", default=TORCH_VENV if os.path.exists(TORCH_VENV) else "",
                 help="a Python with torch for the PyTorch column ('' leaves it out)")
  args = p.parse_args()
  import jax

  from mlc_jax.ops import conv
  if not conv.available():
    raise SystemExit(f"the oneDNN convolutions are off ({conv.why_not()}): nothing to compare")
  torch = PeerSide(args.torch, "torch_peer.py") if args.torch and args.arch == "vgg16" else None
  # Keras without the settings this process made (parallel.setup_process): as its users run it.
  keras_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  keras = PeerSide(sys.executable, "keras_peer.py", env=keras_env)
  print(f"# {common.machine()}, {jax.device_count()} JAX device(s), batch {args.batch} "
        f"(infer {args.infer_batch}), {args.steps} steps x best of {args.rounds} rounds, "
        f"{args.dtype}, oneDNN threads {conv.threads()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        + (f", torch {torch.ask({'setup': {'size': 32, 'batch': 1, 'unfreeze': 'infer'}})['version']}"
           if torch else ""))
  head = ("| size | unfreeze | oneDNN img/s | Keras img/s | oneDNN/Keras | lax img/s | lax/Keras "
          "| oneDNN/lax | cpu s/img oneDNN, Keras |")
  if torch:
    head += " PyTorch img/s | oneDNN/PyTorch |"
  print(head)
  print("|" + "---|" * (head.count("|") - 1), flush=True)
  rows = []
  for size in (int(s) for s in args.sizes.split(",")):
    for unfreeze in args.unfreeze.split(","):
      batch = args.infer_batch if unfreeze == "infer" else args.batch
      ours = (size, batch, unfreeze, args.width)
      sides = {"oneDNN": jax_side(*ours, False, args.arch, args.blocks, args.dtype),
               "lax": jax_side(*ours, True, args.arch, args.blocks, args.dtype),
               "Keras": keras.setup(size=size, batch=batch, unfreeze=unfreeze, blocks=args.blocks,
                                    arch=args.arch, width=args.width, dtype=args.dtype)}
      if torch:
        sides["PyTorch"] = torch.setup(size=size, batch=batch, unfreeze=unfreeze,
                                       blocks=args.blocks, dtype=args.dtype)
      r = measure(sides, batch, args.steps, args.rounds)
      o, k, x = r["oneDNN"][0], r["Keras"][0], r["lax"][0]
      line = (f"| {size} | {unfreeze} | {o:.2f} | {k:.2f} | {o / k:.2f}x | {x:.2f} | {x / k:.2f}x "
              f"| {o / x:.2f}x | {r['oneDNN'][1]:.2f}, {r['Keras'][1]:.2f} |")
      row = {"size": size, "unfreeze": unfreeze, "batch": batch, "blocks": args.blocks,
             "dtype": args.dtype,
             **{name: rate for name, (rate, _) in r.items()}}
      if torch:
        t = r["PyTorch"][0]
        line += f" {t:.2f} | {o / t:.2f}x |"
      rows.append(row)
      print(line, flush=True)
  keras.close()
  if torch:
    torch.close()
  rows = [{"arch": args.arch, **row} for row in rows]
  print(json.dumps({"benchmark": "train_step", "machine": common.machine(), "rows": rows}))


if __name__ == "__main__":
  main()
