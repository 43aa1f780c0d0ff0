"""Runs every benchmark script as a subprocess and writes BENCHMARKS.md from their JSON lines.

  .venv/bin/python benchmarks/run_all.py [--out BENCHMARKS.md] [--only inference,devices]
                                         [--gpu_json runs/gpu/gpu_step.json] [--timeout 900]

Each row is a ratio against a peer measured in the same run (same machine, same minute), with
the machine, the date and the exact command that produced it. Every script prints its own table
and, last, one JSON line; the tables are copied under "Details". The sizes below keep the whole
run near 10 minutes on a 2-core CPU; each script's flags give bigger ones. GPU rows come from
`bash benchmarks/gpu.sh` on the accelerator machine (BUILD.md, GPU): pass the gpu_step.json it
writes under $OUT with --gpu_json; without one they read 'not measured'. The `## ` sections of
an existing BENCHMARKS.md that this script does not write (tables with their own commands) are
kept as they are.
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

# (key, what the row compares, script, flags): the sizes that fit ~10 minutes on 2 CPU cores.
BENCHMARKS = [
    ("train_step", "fine-tune step and inference vs Keras 3 (TensorFlow)",
     "benchmarks/train_step.py", ["--sizes=224", "--batch=4", "--steps=2", "--rounds=2",
                                  "--unfreeze=1,all,infer"]),
    ("inference", "inference images/s vs Keras predict, 224 px", "benchmarks/inference.py", []),
    ("head_vs_finetune", "bottleneck head epoch vs finetune epoch",
     "benchmarks/head_vs_finetune.py", []),
    ("metrics", "metrics.compute vs sklearn", "benchmarks/metrics.py", ["--repeats=2"]),
    ("input_pipeline", "input pipeline vs fine-tune step", "benchmarks/input_pipeline.py", []),
    ("devices", "4 vs 1 (fake) devices", "benchmarks/devices.py", []),
    ("precision", "bf16 vs float32", "benchmarks/precision.py", []),
]
GPU_ROWS = [f"fine-tune step images/s and MFU, VGG16 224 px bf16, batch {b}, unfreeze {u}"
            for u in ("1", "all") for b in (64, 128, 256)] + [
                "head step images/s", "inference images/s", "host decode images/s"]


def run_script(script, flags, timeout):
  """Runs one script -> (command string, seconds, return code, stdout, its JSON or None)."""
  cmd = [sys.executable, script, *flags]
  shown = " ".join([".venv/bin/python", script, *map(shlex.quote, flags)])
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  start = time.time()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    rc, out, err = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    rc, out, err = "timeout", e.stdout or "", e.stderr or ""
    out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
  seconds = time.time() - start
  result = None
  for line in reversed(out.strip().splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        result = json.loads(line)
        break
      except json.JSONDecodeError:
        continue
  if rc != 0:
    out += f"\n[exit status {rc}]\n" + err[-2000:]
  return shown, seconds, rc, out, result


def _fmt(x):
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    if math.isnan(x):
      return "nan"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
  return str(x)


def _ratios(obj, prefix=""):
  """Every numeric leaf whose key says 'ratio' (or 'x'), with its path: for scripts without rows."""
  found = []
  if isinstance(obj, dict):
    for k, v in obj.items():
      found += _ratios(v, f"{prefix}{k}.")
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      label = v.get("name") or v.get("setting") if isinstance(v, dict) else None
      found += _ratios(v, f"{prefix}{label or i}.")
  elif isinstance(obj, (int, float)) and "ratio" in prefix.lower():
    found.append((prefix.rstrip("."), obj))
  return found


def _number(text):
  return float(re.sub(r"[^0-9.eE+-]", "", text))


def rows_from_text(key, out):
  """Rows read from the printed table of a script that has no JSON line (or None)."""
  rows = []
  lines = out.splitlines()
  if key == "train_step":  # | size | unfreeze | oneDNN img/s | Keras img/s | oneDNN/Keras | ...
    for line in lines:
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if len(cells) >= 5 and cells[0].isdigit() and cells[4].endswith("x"):
        infer = cells[1] == "infer"
        name = (f"inference {cells[0]} px" if infer
                else f"fine-tune step {cells[0]} px, unfreeze {cells[1]}")
        rows.append(common.row(name, _number(cells[2]), _number(cells[3]),
                               "Keras predict_on_batch" if infer else "Keras train_on_batch"))
  elif key == "metrics":  # seconds of sklearn and of compute (compiled)
    times = {}
    for line in lines:
      for name in ("sklearn equivalents", "compute (compiled)"):
        if line.startswith(name):
          times[name] = _number(line[len(name):].split()[0])
    if len(times) == 2:
      rows.append(common.row("metrics.compute, every key (compiled)",
                             1 / times["compute (compiled)"], 1 / times["sklearn equivalents"],
                             "sklearn equivalents", unit="runs/s"))
  elif key == "input_pipeline":  # images/s per row; the step is the consumer
    rates = {}
    for line in lines:
      parts = line.rsplit(None, 1)
      if len(parts) == 2 and re.fullmatch(r"[0-9.]+", parts[1]):
        rates[parts[0].strip()] = float(parts[1])
    step = next((v for k, v in rates.items() if k.startswith("fine-tune step")), None)
    for name, value in rates.items():
      if step and name.startswith("host decode"):
        rows.append(common.row(name, value, step, "the fine-tune step it feeds"))
  return rows or None


def table_rows(key, title, result):
  """Markdown rows (what, ours, peer, ratio) for one script's JSON."""
  if result is None:
    return [f"| {title} | no result (see Details) | | |"]
  if isinstance(result.get("rows"), list) and result["rows"] and "ratio" in result["rows"][0]:
    return [f"| {title}: {r['name']} | {_fmt(r['ours'])} {r.get('unit', '')} | "
            f"{_fmt(r['peer'])} ({r['peer_name']}) | **{_fmt(r['ratio'])}x** |"
            for r in result["rows"]]
  found = _ratios(result)
  if not found:
    return [f"| {title} | `{json.dumps(result)[:300]}` | | |"]
  return [f"| {title}: {path} | | | **{_fmt(value)}x** |" for path, value in found]


def gpu_rows(path):
  """GPU rows from gpu_step.py's JSON (OUT/gpu_step.json, or a log whose last line is it), or
  'not measured'."""
  if not path:
    return [f"| {what} | not measured (no GPU in this run) | | |" for what in GPU_ROWS]
  result = json.loads(pathlib.Path(path).read_text().strip().splitlines()[-1])
  device = (result.get("device") or {}).get("kind", "?")
  where = f"VGG16 {result['size']} px {result['dtype']} ({device})"
  rows = []
  for r in result["results"]:
    what = r["name"] if r["kind"] == "decode" else f"{r['name']}, {where}"
    if "error" in r or "skipped" in r:
      why = f"failed: {r['error'][:80]}" if "error" in r else r["skipped"]
      rows.append(f"| {what} | {why} | | |")
      continue
    peak = f", peak {r['peak_bytes'] / 2 ** 30:.1f} GiB" if r.get("peak_bytes") else ""
    if r["kind"] == "finetune":
      util = f"MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else \
          f"HW util {100 * r['hardware_util']:.1f}%"
      rows.append(f"| {what} | {r['images_per_s']:.0f} images/s{peak} | "
                  f"{result['peak_tflops']:g} TFLOP/s peak | **{util}** |")
    else:
      rows.append(f"| {what} | {r['images_per_s']:.0f} images/s{peak} | | |")
  rows += [f"| {r['name']} | {_fmt(r['ours'])} {r['unit']} | {_fmt(r['peer'])} "
           f"({r['peer_name']}) | **{_fmt(r['ratio'])}x** |" for r in result.get("rows", [])]
  return rows


GENERATED = ("## GPU", "## Commands", "## Details")  # the `## ` sections main() writes


def kept_sections(path):
  """The lines of the `## ` sections of an existing BENCHMARKS.md that main() does not write
  (tables measured with their own commands, such as benchmarks/train_step.py's and
  benchmarks/backbones.py's): a rerun keeps them as they are, after its own table."""
  kept, keep = [], False
  for line in (path.read_text().splitlines() if path.exists() else []):
    if line.startswith("## "):
      keep = not line.startswith(GENERATED)
    if keep:
      kept.append(line)
  return kept


def main(argv=None):
  """Runs the benchmarks and writes the markdown file."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
  parser.add_argument("--only", default="", help="comma-separated keys: " +
                      ",".join(k for k, *_ in BENCHMARKS))
  parser.add_argument("--gpu_json", default="", help="file whose last line is gpu_step.py's JSON")
  parser.add_argument("--timeout", type=int, default=900, help="seconds per script")
  args = parser.parse_args(argv)
  only = set(filter(None, args.only.split(",")))
  started = datetime.datetime.now(datetime.timezone.utc)
  lines, details, commands = [], [], []
  for key, title, script, flags in BENCHMARKS:
    if only and key not in only:
      continue
    if not (ROOT / script).exists():
      lines.append(f"| {title} | not measured ({script} is missing) | | |")
      continue
    print(f"== {key}: {script} {' '.join(flags)}", flush=True)
    shown, seconds, rc, out, result = run_script(script, flags, args.timeout)
    print(out, flush=True)
    has_rows = isinstance((result or {}).get("rows"), list) and result["rows"] \
        and "ratio" in result["rows"][0]
    if not has_rows and rows_from_text(key, out):  # a script with its own JSON shape, or none
      result = {**(result or {}), "rows": rows_from_text(key, out)}
    lines += table_rows(key, title, result)
    commands.append(f"- {title}: `{shown}` ({seconds:.0f} s, exit {rc})")
    details.append(f"### {title}\n\n`{shown}`\n\n```\n{out.strip()}\n```\n")
  total = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
  import jax
  doc = [
      "# Benchmarks",
      "",
      "Every row is a ratio against a peer measured in the same run, on the same machine. "
      "Ratio = ours / peer: for rates above 1 means mlc_jax is faster; for the rows marked "
      "'lower is better' (memory) below 1 means it needs less. Written by "
      "`benchmarks/run_all.py`; rerun it to refresh (timings on a shared machine are noisy, the "
      "ratios of one run are what to compare). The sections between the first table and GPU "
      "come from their own commands, given in each; run_all.py keeps them as they are.",
      "",
      f"- machine: {common.machine()} ({platform.system()} {platform.machine()}); "
      f"jax {jax.__version__} on {jax.devices()[0].platform}",
      f"- date: {started:%Y-%m-%d %H:%M} UTC ({total / 60:.1f} minutes in all)",
      "- command: `" + " ".join([".venv/bin/python benchmarks/run_all.py",
                                  *map(shlex.quote, argv or sys.argv[1:])]) + "`",
      "",
      "| what | ours | peer | ratio |",
      "|---|---|---|---|",
      *lines,
      "",
      *kept_sections(pathlib.Path(args.out)),
      "## GPU",
      "",
      "`bash benchmarks/gpu.sh` (benchmarks/gpu_step.py: the package's steps, VGG16 224 px bf16; "
      "MFU = images/s x 3 x 30.9e9 / 990e12 for the full step; BUILD.md says how to run it).",
      "",
      "| what | ours | peer | ratio |",
      "|---|---|---|---|",
      *gpu_rows(args.gpu_json),
      "",
      "## Commands",
      "",
      *commands,
      "",
      "## Details (each script's own output)",
      "",
      *details,
  ]
  pathlib.Path(args.out).write_text("\n".join(doc) + "\n")
  print(f"wrote {args.out} ({total / 60:.1f} minutes)")


if __name__ == "__main__":
  main()
