"""Host memory that stays with the process between steps (glibc malloc settings for a CPU run).

XLA:CPU allocates a step's temporaries (about 100 MB for VGG16's fine-tune step at 224 px, batch
4) anew at every execution, on one of its own threads. glibc serves a block that large with mmap
(from a thread's own arena, any block over 64 MiB) and returns it to the kernel on free, so every
step faulted the same 100 MB back in page by page: 25,600 minor faults and 50 ms of kernel time a
step, 7% of the step's wall time (benchmarks/train_step.py). `keep_freed_memory` makes every thread
allocate from the main arena with no mmap'd blocks and no trimming below 1 GiB, so a freed block is
reused by the next step; the process then holds its peak heap until it exits.

Applied by parallel.setup_process (an entry point's settings), before JAX or TensorFlow start their
threads (a thread keeps the arena it first allocated from), and only where JAX has no accelerator
plugin: with a GPU the host step is not the bottleneck and tf.data's many decoding threads would
share one arena's lock. MLC_JAX_KEEP_MEMORY=0 leaves malloc as it is; =1 applies it regardless.
Linux with glibc only (a no-op elsewhere).
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
TRIM_THRESHOLD = 1 << 30


def _accelerator_plugins():
  """Whether JAX may find a GPU/TPU backend here (a jax plugin or libtpu installed)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return any(p.strip() not in ("cpu", "") for p in platforms.split(","))
  return bool(importlib.metadata.entry_points(group="jax_plugins")
              or importlib.util.find_spec("jax_plugins") or importlib.util.find_spec("libtpu"))


def wanted():
  """Whether setup_process applies keep_freed_memory (MLC_JAX_KEEP_MEMORY, else CPU-only JAX)."""
  setting = os.environ.get("MLC_JAX_KEEP_MEMORY", "").strip().lower()
  if setting in ("0", "false", "off", "no"):
    return False
  if setting in ("1", "true", "on", "yes"):
    return True
  return not _accelerator_plugins()


def keep_freed_memory():
  """One arena, no mmap'd blocks, no trimming below 1 GiB (glibc mallopt) -> True if applied."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(option, value) == 1 for option, value in
             ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
