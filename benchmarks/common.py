"""Shared by the benchmark scripts: best-of timing, the machine's description, the JSON result line,
and the package's own train steps built the way mlc_jax.train.stages builds them.

Every script prints its own table, then one final line of JSON that benchmarks/run_all.py parses:
{"benchmark": NAME, "rows": [{"name", "ours", "peer", "peer_name", "unit", "ratio"}, ...], ...}
where ratio = ours / peer for rates (higher is better for us) as the row says.
"""
import json
import os
import platform
import time

from mlc_jax import parallel

parallel.setup_process()  # a benchmark is an entry point: XLA's CPU flags, TensorFlow off the GPUs


def best_of(fn, repeats):
  """(best seconds, last result) of `repeats` calls of fn (each call must block until done)."""
  best, result = float("inf"), None
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def cpu_model():
  """The CPU's model name (from /proc/cpuinfo on Linux), else platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine():
  """'CPU model, N cores' (cores this process may use)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{cpu_model()}, {cores} cores"


def row(name, ours, peer, peer_name, unit="images/s"):
  """One result row; ratio = ours / peer (both rates, so > 1 means we are faster)."""
  return {"name": name, "ours": ours, "peer": peer, "peer_name": peer_name, "unit": unit,
          "ratio": ours / peer if peer else float("nan")}


def print_table(title, rows):
  """The human table of a script's rows."""
  names = [f"{r['name']} vs {r['peer_name']}" for r in rows]
  w = max([4] + [len(n) for n in names])
  print(title)
  print(f"| {'what':{w}s} | {'ours':>10s} | {'peer':>10s} | {'ours / peer':>11s} |")
  print(f"|{'-' * (w + 2)}|{'-' * 12}|{'-' * 12}|{'-' * 13}|")
  for name, r in zip(names, rows):
    print(f"| {name:{w}s} | {r['ours']:10.2f} | {r['peer']:10.2f} | {r['ratio']:11.3f} |")


def emit(benchmark, rows, **extra):
  """The final machine-readable line."""
  print(json.dumps({"benchmark": benchmark, "machine": machine(), "rows": rows, **extra}),
        flush=True)


def image_batch(batch, size, classes=20, seed=0):
  """A random uint8 image batch with ~10% positive multi-hot labels (numpy, all valid)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
          "labels": (rng.random((batch, classes)) < 0.1).astype(np.float32),
          "mask": np.ones(batch, bool)}


def finetune_step(config, model, mesh, unfreeze, *, augment=True, steps_per_epoch=100):
  """The package's finetune stage for `model` (mlc_jax.train.stages.finetune_stage, as
  run_finetune builds it) with `unfreeze` top blocks, ready to step: loop.prepare -> loop.Prepared
  (.state, .frozen, .train_step, .eval_step). augment=False turns config.augment's ops off. No
  feeds: a benchmark brings its own batches. The layout follows config.param_sharding.
  """
  import ml_collections

  from mlc_jax.train import loop, stages
  c = ml_collections.ConfigDict(config.to_dict())
  c.finetune.unfreeze_blocks = str(unfreeze)
  if not augment:
    c.augment.update(flip=False, zoom=0.0, rotation=0.0, noise=0.0, color_jitter=0.0)
  return loop.prepare(stages.finetune_stage(c, model, steps_per_epoch=steps_per_epoch), c, mesh)


def head_step(config, model, mesh, *, activation="sigmoid", loss_fn=None, steps_per_epoch=100):
  """The package's head stage for `model` (mlc_jax.train.stages.head_stage: model.head alone on
  batches of cached 'features'), ready to step -> loop.Prepared. loss_fn: default the config's
  (BCE for a sigmoid head, softmax cross-entropy for a softmax one).
  """
  import dataclasses

  import ml_collections

  from mlc_jax.train import loop, stages
  c = ml_collections.ConfigDict(config.to_dict())
  c.head.activation = activation
  stage = stages.head_stage(c, model, steps_per_epoch=steps_per_epoch)
  if loss_fn is not None:
    stage = dataclasses.replace(stage, loss_fn=loss_fn)
  return loop.prepare(stage, c, mesh)


def run_steps(prepared, state, batch, steps, *, first=0, key=None):
  """`steps` train steps of a loop.Prepared on one device batch -> the new state (not awaited)."""
  import jax
  key = jax.random.PRNGKey(0) if key is None else key
  for i in range(first, first + steps):
    state = prepared.train_step(state, prepared.frozen, batch, key, i)
  return state


def forward(model, mesh, activation="sigmoid"):
  """(jitted scores(state, images), state placed replicated): the model in inference mode, as
  mlc_jax.eval.scoring runs it (models.forward), images split over 'data'."""
  from flax import nnx

  from mlc_jax import models, parallel
  graphdef, state = nnx.split(model)
  return (models.forward(graphdef, activation, mesh, parallel.jit_options(model)),
          parallel.replicate(state, mesh))
