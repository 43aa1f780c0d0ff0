"""The accelerator check: fine-tune step images/s, MFU, compiled FLOPs and peak memory, the head
step, inference and the host decode rate, in one command (run by benchmarks/gpu.sh).

  python benchmarks/gpu_step.py [--batches 64,128,256] [--unfreeze all,1] [--dtype bfloat16]
                                [--size 224] [--width 1] [--steps 20] [--peak_tflops 990]
                                [--budget 480] [--out DIR] [--in_process]
  python benchmarks/gpu_step.py --dry-run   # the same code path at tiny size on the CPU

Every setting runs in a fresh child process (so its peak device memory is its own, and an
out-of-memory batch costs only its row; --in_process runs them all in this one), in this order,
until --budget seconds are spent:
- finetune, per unfreeze and batch: the package's step (benchmarks/common.finetune_step:
  mlc_jax.train.loop.prepare of the finetune Stage; on-device augmentation, VGG16 with the default
  head, BCE, SGD momentum 0.9, freezing by unfreeze_blocks, donated TrainState) on a uint8 batch
  already on the device, over every local device (a 'data' mesh). images/s = batch x --steps / the
  time of --steps steps after a compiled warm-up step; the XLA cost-analysis FLOPs of the compiled
  step per image; and MFU = images/s x 3 x 30.9e9 / (peak_tflops x 1e12) (VGG16 forward: 15.47
  GMAC = 30.9 GFLOP per 224 px image, a full training step ~3x that), defined for the full step of
  the full model (unfreeze all, width 1, 224 px); every step also gets the hardware utilisation
  (cost-analysis FLOPs x images/s / peak).
- head: the head stage's step (benchmarks/common.head_step: model.head alone on bottleneck-feature
  batches, RMSprop) at head.batch_size, 10x --steps steps.
- inference: mlc_jax.inference.classifier.Classifier.predict on host uint8 images (what a user
  calls: transfers and the host copy of the scores included), and the same jitted forward
  (models.probabilities) on a batch already on the device.
- decode: host JPEG decode + resize to 224 on one core and on every core (benchmarks/
  input_pipeline.host_rate: tf.data as mlc_jax.data.pipeline runs it); skipped, and the row says
  so, where TensorFlow is not installed (the accelerator machine lent here has none).
Memory per setting: device.memory_stats()['peak_bytes_in_use'] where the backend reports it (GPU,
TPU), and everywhere XLA's memory analysis of the compiled step (arguments + outputs - aliased +
temporaries). Ratios against peers of the same run: MFU and utilisation against the peak; the head
step and inference against the fine-tune step; host decode against the fastest fine-tune step
(1 / the one-core ratio = the host cores needed to feed it). --dry-run: 32 px, width 1/16, batch
2, 2 steps, on the CPU with XLA's quickest compile; it proves the path, its rates mean nothing.

Results: a table on stdout, then one JSON line, also written to OUT/gpu_step.json (--out, default
$OUT, else runs/gpu). The step path imports no TensorFlow (tests/test_gpu_dry_run.py runs
--dry-run with TensorFlow blocked).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

FORWARD_FLOP = 30.9e9  # VGG16 at 224 px, per image
# --dry-run: the same settings and code at a size a 2-core CPU runs in seconds.
DRY_RUN = {"batches": "2", "size": 32, "width": 1 / 16, "steps": 2, "classes": 4,
           "head_batch": 8, "budget": 120.0, "decode_images": 8}
TF_MODULES = ("tensorflow", "tensorflow_datasets")


def _config(args):
  """The default config at the benchmark's size, dtype and width, without a weights file."""
  from configs import default
  c = default.get_config()
  c.image_size, c.model.weights, c.dtype, c.model.width = args.size, "", args.dtype, args.width
  return c


def _device():
  """The first device, the device count and the jax it runs under."""
  import jax
  import jaxlib
  d = jax.devices()[0]
  return {"kind": d.device_kind, "platform": d.platform, "count": jax.device_count(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _peak_bytes():
  """The largest device memory in use so far on the first device, where the backend says."""
  import jax
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _compiled_facts(compiled):
  """(XLA cost-analysis FLOPs, XLA memory-analysis bytes) of a compiled executable."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", float("nan")))
  m = compiled.memory_analysis()
  total = None
  if m is not None:
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)
  return flops, total


def _timed_steps(fn, state, frozen, batch, key, steps):
  """(seconds of `steps` calls of a compiled train step after one warm-up call, final state)."""
  import jax
  state = fn(state, frozen, batch, key, 0)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(1, steps + 1):
    state = fn(state, frozen, batch, key, i)
  jax.block_until_ready(state)
  return time.perf_counter() - start, state


def finetune(setting, args):
  """One fine-tune setting -> its measurements."""
  import jax
  from flax import nnx

  from mlc_jax import models, parallel
  batch, unfreeze = setting["batch"], setting["unfreeze"]
  c = _config(args)
  model = models.build_model(c, args.classes, rngs=nnx.Rngs(0))
  mesh = parallel.mesh()
  p = common.finetune_step(c, model, mesh, unfreeze, steps_per_epoch=1000)
  device_batch = parallel.shard_batch(common.image_batch(batch, args.size, args.classes), mesh)
  key = jax.random.PRNGKey(0)
  start = time.perf_counter()
  compiled = p.train_step.lower(p.state, p.frozen, device_batch, key, 0).compile()
  compile_s = time.perf_counter() - start
  flops, compiled_bytes = _compiled_facts(compiled)
  # The compiled executable itself: calling p.train_step again could compile a second time.
  seconds, state = _timed_steps(compiled, p.state, p.frozen, device_batch, key, args.steps)
  rate = batch * args.steps / seconds
  peak = args.peak_tflops * 1e12
  full_model = unfreeze == "all" and args.size == 224 and args.width == 1
  return {"images_per_s": rate, "compile_s": compile_s, "xla_flops_per_image": flops / batch,
          "mfu": rate * 3 * FORWARD_FLOP / peak if full_model else None,
          "hardware_util": rate * flops / batch / peak,
          "loss": float(state.loss_sum) / (args.steps + 1),
          "peak_bytes": _peak_bytes(), "compiled_bytes": compiled_bytes}


def head(setting, args):
  """The head stage's step on feature batches -> its measurements."""
  import jax
  import numpy as np
  from flax import nnx

  from mlc_jax import models, parallel
  batch, steps = setting["batch"], 10 * args.steps
  c = _config(args)
  model = models.build_model(c, args.classes, rngs=nnx.Rngs(0))
  mesh = parallel.mesh()
  p = common.head_step(c, model, mesh, steps_per_epoch=1000)
  rng = np.random.default_rng(0)
  host = {"features": rng.random((batch, model.backbone.num_features), dtype=np.float32),
          "labels": (rng.random((batch, args.classes)) < 0.1).astype(np.float32),
          "mask": np.ones(batch, bool)}
  device_batch = parallel.shard_batch(host, mesh)
  key = jax.random.PRNGKey(0)
  start = time.perf_counter()
  compiled = p.train_step.lower(p.state, p.frozen, device_batch, key, 0).compile()
  compile_s = time.perf_counter() - start
  flops, compiled_bytes = _compiled_facts(compiled)
  seconds, state = _timed_steps(compiled, p.state, p.frozen, device_batch, key, steps)
  return {"images_per_s": batch * steps / seconds, "compile_s": compile_s,
          "xla_flops_per_image": flops / batch, "loss": float(state.loss_sum) / (steps + 1),
          "peak_bytes": _peak_bytes(), "compiled_bytes": compiled_bytes}


def inference(setting, args):
  """Classifier.predict from host images, and the jitted forward on a device batch."""
  import jax
  from flax import nnx

  from mlc_jax import models, parallel
  from mlc_jax.inference.classifier import Classifier
  batch, batches = setting["batch"], 4
  c = _config(args)
  model = models.build_model(c, args.classes, rngs=nnx.Rngs(0))
  host = common.image_batch(batch * batches, args.size, args.classes)["image"]
  classifier = Classifier(model, [f"label{i}" for i in range(args.classes)], image_size=args.size)
  start = time.perf_counter()
  classifier.predict(host[:batch], batch_size=batch)  # compiles
  compile_s = time.perf_counter() - start
  t_predict, scores = common.best_of(lambda: classifier.predict(host, batch_size=batch), 2)
  mesh = parallel.mesh()
  forward, state = common.forward(model, mesh)
  images = parallel.shard_batch({"image": host[:batch]}, mesh)["image"]
  compiled = forward.lower(state, images).compile()
  flops, compiled_bytes = _compiled_facts(compiled)
  jax.block_until_ready(compiled(state, images))
  t_forward, _ = common.best_of(
      lambda: jax.block_until_ready([compiled(state, images) for _ in range(batches)]), 2)
  return {"images_per_s": len(host) / t_predict, "device_images_per_s": batch * batches / t_forward,
          "compile_s": compile_s, "xla_flops_per_image": flops / batch,
          "scores_finite": bool(scores.size and (scores == scores).all()),
          "peak_bytes": _peak_bytes(), "compiled_bytes": compiled_bytes}


def decode(setting, args):
  """Host decode + resize rates (one core, every core), or why they are not measured."""
  try:
    from benchmarks import input_pipeline
  except ImportError as e:
    missing = (getattr(e, "name", None) or "").split(".")[0]
    if missing in TF_MODULES or any(m in str(e) for m in TF_MODULES):
      return {"skipped": "TensorFlow is not installed here: the input pipeline is tf.data, so "
                         "the host decode rate is not measured on this machine"}
    raise
  from mlc_jax.data import pipeline
  jpegs = input_pipeline.make_jpegs(setting["images"])
  return {"images_per_s": input_pipeline.host_rate(jpegs, None),
          "one_core_images_per_s": input_pipeline.host_rate(jpegs, 1),
          "cores": pipeline.host_cores()}


KINDS = {"finetune": finetune, "head": head, "inference": inference, "decode": decode}


def settings(args):
  """Every setting of the run, in the order they run."""
  batches = [int(b) for b in args.batches.split(",")]
  out = [{"kind": "finetune", "unfreeze": u, "batch": b}
         for u in args.unfreeze.split(",") for b in batches]
  return out + [{"kind": "head", "batch": args.head_batch},
                {"kind": "inference", "batch": max(batches)},
                {"kind": "decode", "images": args.decode_images}]


def name_of(s):
  """A setting's row name."""
  if s["kind"] == "finetune":
    return f"finetune unfreeze {s['unfreeze']} batch {s['batch']}"
  if s["kind"] == "decode":
    return "host decode+resize 224, all cores"
  return f"{s['kind']} batch {s['batch']}"


def child(setting, args):
  """Runs one setting in this process -> its row (the setting, its results, the device)."""
  row = {"name": name_of(setting), **setting}
  row.update(KINDS[setting["kind"]](setting, args))
  if setting["kind"] != "decode":
    row["device"] = _device()
  return row


def run_child(setting, args, timeout):
  """One setting in a fresh process -> its row, or the row with the error it ended with."""
  cmd = [sys.executable, __file__, "--child", json.dumps({"setting": setting, "args": vars(args)})]
  row = {"name": name_of(setting), **setting}
  start = time.monotonic()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {**row, "error": f"timed out after {timeout:.0f}s (the --budget left)"}
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines or not lines[-1].startswith("{"):
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {**row, "error": f"exit {proc.returncode}: {tail[:400]}"}
  return {**json.loads(lines[-1]), "wall_s": round(time.monotonic() - start, 1)}


def run_here(setting, args):
  """One setting in this process (--in_process) -> its row, or the row with its error."""
  try:
    return child(setting, args)
  except Exception as e:  # a setting's failure is its row's, as in a child
    return {"name": name_of(setting), **setting, "error": f"{type(e).__name__}: {str(e)[:400]}"}


def _mib(x):
  return f"{x / 2 ** 20:.0f}" if isinstance(x, (int, float)) else "-"


def _pct(x):
  return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"


def print_row(r):
  """One line of the table."""
  if "error" in r or "skipped" in r:
    print(f"| {r['name']} | {'failed: ' + r['error'] if 'error' in r else r['skipped']} |"
          + " |" * 6, flush=True)
    return
  flops = r.get("xla_flops_per_image")
  print(f"| {r['name']} | {r['images_per_s']:.1f} | {_pct(r.get('mfu'))} | "
        f"{_pct(r.get('hardware_util'))} | "
        f"{f'{flops / 1e9:.2f}' if isinstance(flops, float) else '-'} | "
        f"{_mib(r.get('peak_bytes'))} | {_mib(r.get('compiled_bytes'))} |", flush=True)


def ratios(rows, args):
  """Ratios against peers of the same run (the fastest fine-tune step of each kind)."""
  ok = [r for r in rows if "images_per_s" in r]
  fine = {u: max((r for r in ok if r["kind"] == "finetune" and r["unfreeze"] == u),
                 key=lambda r: r["images_per_s"], default=None) for u in args.unfreeze.split(",")}
  fastest = max((r for r in fine.values() if r), key=lambda r: r["images_per_s"], default=None)
  slowest = min((r for r in fine.values() if r), key=lambda r: r["images_per_s"], default=None)
  by_kind = {r["kind"]: r for r in ok if r["kind"] != "finetune"}
  out = []
  if "head" in by_kind and fastest:
    out.append(common.row("head step", by_kind["head"]["images_per_s"], fastest["images_per_s"],
                          f"fastest fine-tune step ({fastest['name']})"))
  if "inference" in by_kind and slowest:
    inf = by_kind["inference"]
    out.append(common.row("inference, Classifier.predict from host", inf["images_per_s"],
                          slowest["images_per_s"], f"fine-tune step ({slowest['name']})"))
    out.append(common.row("inference, Classifier.predict from host", inf["images_per_s"],
                          inf["device_images_per_s"], "the same forward on a device batch"))
  if "decode" in by_kind and fastest:
    dec = by_kind["decode"]
    out.append(common.row(f"host decode, all {dec['cores']} cores", dec["images_per_s"],
                          fastest["images_per_s"], f"fastest fine-tune step ({fastest['name']})"))
    out.append(common.row("host decode, one core", dec["one_core_images_per_s"],
                          fastest["images_per_s"], f"fastest fine-tune step ({fastest['name']})"))
  return out


def main(argv=None):
  """Runs every setting in a child process; prints the table and the JSON line, writes the JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="64,128,256")
  parser.add_argument("--unfreeze", default="all,1", help="in this order: the MFU rows first")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--classes", type=int, default=20)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--head_batch", type=int, default=64, help="head.batch_size's default")
  parser.add_argument("--decode_images", type=int, default=96, help="distinct JPEGs (x3 passes)")
  parser.add_argument("--peak_tflops", type=float, default=990.0,
                      help="dense bf16 peak (H100/H200 SXM: 989)")
  parser.add_argument("--budget", type=float, default=480.0,
                      help="seconds for every setting together; later ones are skipped")
  parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu"),
                      help="folder for gpu_step.json (default $OUT, else runs/gpu)")
  parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                      help="the same code path at tiny size on the CPU")
  parser.add_argument("--in_process", action="store_true",
                      help="run every setting in this process, not one child each (peak memory "
                           "is then the largest so far; the CPU test's quicker dry run)")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    task = json.loads(args.child)
    print(json.dumps(child(task["setting"], argparse.Namespace(**task["args"]))), flush=True)
    return
  if args.dry_run:  # tiny defaults; flags given still win
    parser.set_defaults(**DRY_RUN)
    args = parser.parse_args(argv)
    os.environ["JAX_PLATFORMS"] = "cpu"  # the children inherit both
    # XLA:CPU's quickest compile (about half the time): a dry run proves the path, not a speed.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()
  import jax  # the version only: no backend here, the children own the device
  print(f"jax {jax.__version__}; VGG16 width {args.width:g}, {args.size} px, {args.dtype}, "
        f"{args.steps} timed steps; budget {args.budget:.0f}s"
        + (" (dry run, CPU)" if args.dry_run else ""), flush=True)
  print("| setting | images/s | MFU | HW util | XLA GFLOP/img | peak MiB | compiled MiB |")
  print("|---|---|---|---|---|---|---|", flush=True)
  deadline = time.monotonic() + args.budget
  rows = []
  for s in settings(args):
    left = deadline - time.monotonic()
    if left < 5:
      rows.append({"name": name_of(s), **s, "error": "skipped: the --budget ran out"})
    elif args.in_process:
      rows.append(run_here(s, args))
    else:
      rows.append(run_child(s, args, left))
    print_row(rows[-1])
  device = next((r["device"] for r in rows if "device" in r), None)
  table = ratios(rows, args)
  if table:
    common.print_table(f"ratios against peers of this run ({device['kind'] if device else '?'})",
                       table)
  result = {"benchmark": "gpu_step", "machine": common.machine(), "device": device,
            "dtype": args.dtype, "size": args.size, "width": args.width, "steps": args.steps,
            "peak_tflops": args.peak_tflops, "dry_run": args.dry_run, "results": rows,
            "rows": table}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  line = json.dumps(result)
  (out / "gpu_step.json").write_text(line + "\n")
  print(f"wrote {out / 'gpu_step.json'}")
  print(line, flush=True)
  failed = [r["name"] for r in rows if "error" in r]
  if failed:
    print(f"{len(failed)} setting(s) failed: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()
