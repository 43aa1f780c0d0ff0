"""mlc_jax/ops/host_memory.py: after parallel.setup_process on a CPU-only install, a large block a
thread frees is reused by its next allocation instead of being faulted in again page by page (the
reference: the same process with MLC_JAX_KEEP_MEMORY=0, where glibc's default returns it to the
kernel); the switch and the accelerator check decide when it applies.
"""
import json
import pathlib
import subprocess
import sys

from conftest import subprocess_env
from mlc_jax.ops import host_memory

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A fresh thread (as XLA's are) allocates, touches and frees 100 MB twice, like a step's
# temporaries; the minor page faults of each round are counted.
CHILD = """
import ctypes, json, resource, threading
from mlc_jax import parallel
parallel.setup_process(tensorflow=False)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 100 << 20
faults = []
def rounds():
  for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=rounds)
thread.start()
thread.join()
print(json.dumps(faults))
"""
PAGES = (100 << 20) // 4096


def _faults(**env):
  proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env=subprocess_env(**env))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.splitlines()[-1])


def test_freed_block_is_reused_not_faulted_in_again():
  kept = _faults()  # subprocess_env: JAX_PLATFORMS=cpu, the CPU-only case
  default = _faults(MLC_JAX_KEEP_MEMORY="0")
  assert default[1] > 0.9 * PAGES, default  # glibc's default: every page again
  assert kept[0] > 0.9 * PAGES and kept[1] < 0.01 * PAGES, kept  # the first touch only


def test_when_it_applies(monkeypatch):
  monkeypatch.delenv("MLC_JAX_KEEP_MEMORY", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.wanted()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not host_memory.wanted()  # a GPU run: tf.data's threads keep their own arenas
  monkeypatch.setenv("MLC_JAX_KEEP_MEMORY", "1")
  assert host_memory.wanted()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MLC_JAX_KEEP_MEMORY", "0")
  assert not host_memory.wanted()
  monkeypatch.delenv("MLC_JAX_KEEP_MEMORY")
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(host_memory.importlib.util, "find_spec",
                      lambda name: object() if name == "jax_plugins" else None)
  assert not host_memory.wanted()  # a jax GPU plugin installed
  monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: None)
  assert host_memory.wanted()
