"""Shared by the benchmark scripts: best-of timing, the machine's description, the JSON result line.

Every script prints its own table, then one final line of JSON that benchmarks/run_all.py parses:
{"benchmark": NAME, "rows": [{"name", "ours", "peer", "peer_name", "unit", "ratio"}, ...], ...}
where ratio = ours / peer for rates (higher is better for us) as the row says.
"""
import json
import os
import platform
import time


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
