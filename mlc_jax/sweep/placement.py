"""Where a sweep's local workers run: each its own share of the CPU cores and, with GPUs, its own GPU."""
import os
import shutil
import subprocess


def placements(workers, cores=None, gpus=None):
  """[(cpu set, env)] for each local worker: its share of the cores and, with GPUs, its own."""
  cores = sorted(os.sched_getaffinity(0)) if cores is None else list(cores)
  gpus = _visible_gpus() if gpus is None else list(gpus)
  out = []
  for i in range(workers):
    share = cores[i::workers] or [cores[i % len(cores)]]
    env = {}
    if gpus:
      env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
      if workers > len(gpus):  # workers share a GPU: each takes memory as it needs it
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    out.append((share, env))
  return out


def _visible_gpus():
  """The GPU ids this process may use, without starting JAX (it would claim their memory)."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
  if not shutil.which("nvidia-smi"):
    return []
  try:
    lines = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                           check=False).stdout.splitlines()
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [str(i) for i, line in enumerate(l for l in lines if l.startswith("GPU "))]
