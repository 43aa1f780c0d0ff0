"""Device mesh, shardings, batch placement and host gathers: data parallelism over a 'data' axis.

Batches are split along their first axis. Each process feeds its own slice of the global batch
(the pipeline yields batch_size // process_count images) and `shard_batch` stitches the slices
into one global array. Parameters and optimizer state are replicated (`param_sharding=
'replicated'`, the default) or, with 'fsdp', each array of at least `fsdp_min_size` elements is
split over 'data' along its largest evenly divisible axis (ZeRO-3 / FSDP): a step gathers the
parameters it computes with, and the gradient comes back reduce-scattered to the shards, so each
device holds 1/N of the parameters, gradients and optimizer state between steps.

`gather_split` (and `gather_batches`, batch by batch) is the one pass of a model over a padded
split (validation, evaluation, the feature cache): a forward per device batch, its rows on this
host with the padding dropped, in the split's stored order.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mlc_jax.errors import UserError
from mlc_jax.ops import host_memory

# jaxlib 0.12.0.1's XLA:CPU YNNPACK fusion returns inf/NaN for jitted bfloat16 conv->pool->conv
# chains (reproduced with plain lax ops); turning that one fusion off process-wide fixes it, and
# float32 programs get its reductions back (below). GPUs ignore CPU flags.
XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="

# Its reductions alone, for float32 programs (jit_options): XLA:CPU's own sums over N, H, W (batch
# norm's statistics and their gradients, the pools) ran 2-5x slower; ResNet-50's top-block step at
# 224 px went from 296 to 270 ms, VGG16's inference 3-6% faster. Never for bfloat16: with this
# fusion alone, bfloat16 conv -> pool -> conv chains under lax.conv still come out inf/NaN.
FLOAT32_CPU_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_REDUCE"),)


def setup_process(tensorflow=True):
  """The process-wide settings a run needs, made by its entry point (launch.py's main, a test or
  benchmark process, your own script), never by importing the library: on a CPU-only install,
  freed host memory kept for the next step (ops.host_memory; before any thread allocates), XLA's
  CPU flags (before JAX starts its backend), and TensorFlow, which only feeds the host pipeline,
  kept off any accelerator JAX uses (tensorflow=False leaves TensorFlow unimported)."""
  if host_memory.wanted():
    host_memory.keep_freed_memory()
  if XLA_CPU_FLAGS.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_CPU_FLAGS}".strip()
  if tensorflow:
    try:
      import tensorflow as tf  # noqa: PLC0415 - only modes that read data pay for it
    except ImportError:  # a machine without TensorFlow (an accelerator's step-only install)
      return
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices: then already set up
      pass


AXIS = "data"
FSDP_MIN_SIZE = 2 ** 18  # elements; smaller arrays (biases, BatchNorm, small kernels) stay whole


def jit_options(model):
  """jax.jit's compiler_options for the programs that compute `model` (a backbone, or a model with
  a .backbone), as a hashable tuple of pairs (dict() it for jax.jit): FLOAT32_CPU_OPTIONS on the
  CPU backend when it computes in float32, else none."""
  dtype = getattr(getattr(model, "backbone", model), "dtype", None)
  if jax.default_backend() != "cpu" or dtype is None or np.dtype(dtype) != np.float32:
    return ()
  return FLOAT32_CPU_OPTIONS


def wants_distributed(config=None):
  """Whether this launch is one process of several: config.distributed or a coordinator named."""
  wanted = bool(config is not None and config.get("distributed", False))
  return wanted or any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS"))


def initialize(config=None):
  """Starts jax.distributed when config.distributed is set or the environment names a coordinator.

  Must run before anything touches a device; a no-op for one process or when already started.
  """
  if not wants_distributed(config) or jax.distributed.is_initialized():
    return
  # jax reads only the address from the environment; a plain launch (no SLURM/MPI/k8s to
  # auto-detect) gives the process count and index as JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  kwargs = {"coordinator_address": (os.environ.get("JAX_COORDINATOR_ADDRESS")
                                    or os.environ.get("COORDINATOR_ADDRESS") or None)}
  for key, env_name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if os.environ.get(env_name):
      kwargs[key] = int(os.environ[env_name])
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise UserError(f"jax.distributed.initialize failed ({e}); set JAX_COORDINATOR_ADDRESS="
                    "host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process "
                    "(see BUILD.md)") from e


def mesh(devices=None):
  """A 1-D Mesh named 'data' over all devices (of all processes)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (AXIS,))


def data_sharding(mesh_):
  """Splits the leading (batch) axis over the 'data' axis."""
  return NamedSharding(mesh_, P(AXIS))


def replicated(mesh_):
  """A full copy on every device (parameters, optimizer state, scalars)."""
  return NamedSharding(mesh_, P())


def array_sharding(shape, mesh_, mode="replicated", min_size=FSDP_MIN_SIZE):
  """The NamedSharding of one parameter-like array: replicated, or split for 'fsdp'.

  fsdp splits the largest axis that the number of devices divides (the first such on ties);
  arrays under min_size elements, and those with no such axis, stay replicated.
  """
  n = mesh_.shape[AXIS]
  if mode != "fsdp" or n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return replicated(mesh_)
  for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = AXIS
      return NamedSharding(mesh_, P(*spec))
  return replicated(mesh_)


def state_shardings(tree, mesh_, config=None):
  """Per-leaf shardings of parameters or optimizer state (arrays or ShapeDtypeStructs).

  The rule depends on shapes alone, so an optimizer's moments land where their parameters do.
  config: reads param_sharding and fsdp_min_size; None means replicated.
  """
  mode = "replicated" if config is None else config.get("param_sharding", "replicated")
  min_size = FSDP_MIN_SIZE if config is None else int(config.get("fsdp_min_size", FSDP_MIN_SIZE))
  return jax.tree.map(lambda x: array_sharding(np.shape(x), mesh_, mode, min_size), tree)


def gathered(tree, mesh_):
  """Inside a jitted step: the whole (replicated) arrays of a possibly fsdp-split tree."""
  return jax.lax.with_sharding_constraint(tree, replicated(mesh_))


def shard_batch(batch, mesh_):
  """A dict of this process's numpy arrays -> global jax arrays sharded over 'data'.

  Asynchronous: returns at once, the transfer overlaps with the running step.
  """
  sharding = data_sharding(mesh_)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree):
  """(A pytree of) global arrays, possibly spread over processes -> whole numpy arrays on this host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _host_if_local(x):
  # device_put of a process-local jax.Array onto a multi-process sharding builds an array whose
  # shards Orbax cannot read (jax 0.12); the same values from numpy make a proper global array.
  if isinstance(x, jax.Array) and x.is_fully_addressable and not jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key):
    return np.asarray(x)
  return x


def replicate(tree, mesh_):
  """Places a pytree (parameters, optimizer state) replicated on the mesh."""
  return place(tree, replicated(mesh_))


def place(tree, shardings):
  """Places a pytree on the mesh under `shardings` (one sharding, or a tree of them)."""
  if jax.process_count() > 1:
    tree = jax.tree.map(_host_if_local, tree)
  return jax.device_put(tree, shardings)


def place_state(tree, mesh_, config=None):
  """Places parameters or optimizer state as config.param_sharding says (see state_shardings)."""
  return place(tree, state_shardings(tree, mesh_, config))


def prefetch(batches, mesh_, size=2):
  """Yields device batches while the next `size - 1` are already being transferred."""
  queue = []
  for batch in batches:
    queue.append(shard_batch(batch, mesh_))
    if len(queue) >= size:
      yield queue.pop(0)
  while queue:
    yield queue.pop(0)


def gather_batches(forward, state, batches, mesh_, keys=("labels",)):
  """Yields, per batch of a padded split, its real rows (mask True) as numpy arrays on this host.

  forward(state, device batch) returns the rows' outputs (B, ...), or (outputs, total) with total
  one value per batch (a loss sum). Each item: {'outputs', each of `keys`, 'index' when the batch
  has one, 'total' when forward gives one}; the rows are the global batch's, every process's
  slice, on every process. The host copy of a batch is taken while the next one runs.
  """
  pending = None
  for batch in prefetch(batches, mesh_):
    fields = {k: batch[k] for k in (*keys, "index", "mask") if k in batch}
    item = (forward(state, batch), fields)
    if pending is not None:
      yield _real_rows(*pending)
    pending = item
  if pending is not None:
    yield _real_rows(*pending)


def _real_rows(out, fields):
  out, fields = to_host((out, fields))
  mask = fields.pop("mask").astype(bool)
  total = None
  if isinstance(out, tuple):
    out, total = out
  rows = {"outputs": out[mask], **{k: v[mask] for k, v in fields.items()}}
  if total is not None:
    rows["total"] = total
  return rows


def gather_split(forward, state, batches, mesh_, keys=("labels",)):
  """The rows of every batch of a padded split (see `gather_batches`), concatenated: {'outputs',
  keys..., 'index', 'total' (summed in float64)}, in the split's stored order when the batches
  carry 'index' (else in the batches' order), whatever the number of processes."""
  parts = list(gather_batches(forward, state, batches, mesh_, keys))
  if not parts:
    raise ValueError("gather_split: no batches")
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "total"}
  if "total" in parts[0]:
    out["total"] = float(np.sum([p["total"] for p in parts], dtype=np.float64))
  if "index" in out:
    order = np.argsort(out["index"], kind="stable")
    out = {k: v if k == "total" else v[order] for k, v in out.items()}
  return out
