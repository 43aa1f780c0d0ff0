"""The loop a peer of benchmarks/train_step.py runs in its own interpreter (keras_peer.py,
torch_peer.py): one JSON command a line on stdin, one JSON answer a line on stdout.

  {"setup": {...}} -> {"ok": true, **info}   (the step built, run twice to warm up)
  {"run": STEPS} -> {"seconds": wall, "cpu": process CPU seconds} for STEPS steps.
Imports only the standard library: each peer runs in its own environment (PyTorch's venv too).
"""
import json
import sys
import time


def serve(setup, info):
  """setup(**setting) -> a step callable; info() -> what the answer to a setup also says."""
  step = None
  for line in sys.stdin:
    cmd = json.loads(line)
    if "setup" in cmd:
      step = setup(**cmd["setup"])
      step()
      step()
      out = {"ok": True, **info()}
    else:
      wall, cpu = time.perf_counter(), time.process_time()
      for _ in range(int(cmd["run"])):
        step()
      out = {"seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    print(json.dumps(out), flush=True)
