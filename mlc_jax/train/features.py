"""The bottleneck cache: one forward pass of the frozen backbone over every split, and its feed.

WORKDIR/features/KEY/{split}_features.npy (float32 (N, D)) and {split}_labels.npy (int8
(N, C), 1/0/-1 unknown), opened memory-mapped. KEY hashes everything that changes the numbers: the model config,
the backbone's actual parameter values (so the weights file, or the seed of a from-scratch
backbone, is covered exactly), the dataset fingerprint, the image size, the resize method and the
compute dtype. A cache is written to a temporary directory and renamed, so it is valid or absent;
a cache under another key is removed when a new one is built, unless the root is shared (a
symlink: a sweep's trials), where each key is built once under a file lock. Each file carries a
size record (mlc_jax.files.checked): a cache whose file was truncated since is rebuilt, with a notice.

`Feed` serves the head stage from a cache (on mlc_jax.data.feed): batches are rows of one global
order (a seeded permutation per epoch), and each process feeds its own slice of every global
batch, so the global batches, and the trained head, are those of a 1-process run. The cache is
written from parallel.gather_batches, the one pass of a model over a padded split.
"""
import contextlib
import hashlib
import json
import math
import os
import pathlib
import shutil
import time

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from mlc_jax import models, parallel, workdir as workdir_lib
from mlc_jax.data import feed, pipeline
from mlc_jax.data.source import SPLITS
from mlc_jax.files import checked
from mlc_jax.errors import UserError
from mlc_jax.train import steps


def params_digest(module):
  """sha256 of a module's parameter values (names, shapes, bytes), 16 hex digits."""
  h = hashlib.sha256()
  flat = nnx.to_flat_state(nnx.state(module, models.SAVED))
  for path, var in sorted(flat, key=lambda kv: tuple(map(str, kv[0]))):
    # to_host: with param_sharding='fsdp' over several processes no process holds the whole array.
    value = parallel.to_host(var.get_value())
    h.update("/".join(map(str, path)).encode() + str(value.shape).encode())
    h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()[:16]


def cache_key(config, source, backbone):
  """The hash naming a valid cache for this model, weights, dataset and preprocessing."""
  key = json.dumps({
      "model": config.model.to_dict(), "weights": params_digest(backbone),
      "dataset": source.fingerprint(), "image_size": int(config.image_size),
      "resize": config.data.resize, "dtype": config.dtype,
  }, sort_keys=True, default=str)
  return hashlib.sha256(key.encode()).hexdigest()[:16]


def _paths(directory, split):
  return directory / f"{split}_features.npy", directory / f"{split}_labels.npy"


def damage(directory):
  """What is wrong with a finished cache against its records ('FILE: problem'), or None."""
  for split in SPLITS:
    for f in _paths(directory, split):
      wrong = checked.problem(f)
      if wrong:
        return f"{f}: {wrong}"
  return None


def load(directory):
  """{split: (features memmap (N, D), labels (N, C))} of a finished cache."""
  out = {}
  for split in SPLITS:
    f, l = _paths(directory, split)
    out[split] = (np.load(f, mmap_mode="r"), np.load(l, mmap_mode="r"))
  return out


def _write_split(directory, split, source, config, mesh, forward, state, batch_size):
  # Every process runs the (collective) forward and gathers; only process 0 writes the files,
  # each row at its image's position in the split (the same cache for any number of processes).
  write = jax.process_index() == 0
  n = source.num_examples[split]
  classes = len(source.labels)
  feats = labels = None
  seen = 0
  batches = pipeline.batches(source, split, batch_size=batch_size, train=False, config=config)
  for rows in parallel.gather_batches(lambda weights, batch: forward(weights, batch["image"]),
                                      state, batches, mesh):
    seen += len(rows["index"])
    if not write:
      continue
    if feats is None:
      f_path, l_path = _paths(directory, split)
      feats = np.lib.format.open_memmap(f_path, "w+", np.float32, (n, rows["outputs"].shape[-1]))
      labels = np.lib.format.open_memmap(l_path, "w+", np.int8, (n, classes))
    feats[rows["index"]] = rows["outputs"]
    labels[rows["index"]] = rows["labels"]
  if seen != n:
    raise RuntimeError(f"features of {split}: wrote {seen} rows, expected {n}")
  if write:
    feats.flush()
    labels.flush()
    for f in _paths(directory, split):
      checked.seal(f, size_only=True)


@contextlib.contextmanager
def _build_lock(root):
  """Holds .features.lock beside the root while a cache is checked and built: a second
  single-process run sharing the root (a sweep's workers) waits, then finds the cache.
  Multi-process runs have one chief and no sharer, and take no lock (all must reach the same
  decision without waiting on each other)."""
  if jax.process_count() > 1:
    yield
    return
  root.mkdir(parents=True, exist_ok=True)
  real = root.resolve()  # beside the (shared) root, so the cache folder holds caches only
  with workdir_lib.wait_lock(real.parent / f".{real.name}.lock"):
    yield


def ensure(config, workdir, source, backbone, mesh, batch_size):
  """The cache directory for (config, source, backbone), built when missing or stale.

  A workdir's own features/ holds one cache: building another key removes the old one. A shared
  root (WORKDIR/features a symlink, as in a sweep's trials) keeps every key, since other runs
  may be reading them."""
  root = pathlib.Path(workdir) / "features"
  shared = root.is_symlink()
  key = cache_key(config, source, backbone)
  directory = root / key
  with _build_lock(root):
    wrong = damage(directory) if (directory / "meta.json").exists() else "absent"
    if not wrong:
      logging.info("features: reusing the cache %s", directory)
      return directory
    if wrong != "absent":
      logging.warning("features: the cache is damaged (%s); rebuilding it", wrong)
    chief = jax.process_index() == 0
    tmp = root / f".{key}.tmp"
    if chief:
      root.mkdir(parents=True, exist_ok=True)
      for old in root.iterdir():  # half-written caches, and stale ones (another model/dataset)
        if old.name.endswith(".tmp") or not shared or old == directory:
          shutil.rmtree(old, ignore_errors=True)
      tmp.mkdir()
    graphdef, state = nnx.split(backbone)
    state = parallel.replicate(state, mesh)
    forward = steps.make_features_step(mesh, graphdef, parallel.jit_options(backbone))
    start = time.time()
    for split in SPLITS:
      _write_split(tmp, split, source, config, mesh, forward, state, batch_size)
      logging.info("features: %s done (%d images, %.0fs)", split, source.num_examples[split],
                   time.time() - start)
    if chief:
      (tmp / "meta.json").write_text(json.dumps({"key": key, "splits": source.num_examples,
                                                 "seconds": round(time.time() - start, 1)}))
      os.replace(tmp, directory)  # atomic: a kill leaves no half cache under the real key
  if jax.process_count() > 1:  # the others read the cache only once process 0 has published it
    multihost_utils.sync_global_devices("mlc_jax features cache")
  return directory


class Feed:
  """Batches {'features', 'labels', 'mask'} of one cached split, this process's slice of each.

  train: each epoch a permutation seeded by (seed, epoch), the remainder dropped (order(seed,
  epoch): the rows of an epoch instead, e.g. a mixture's weighted draws); otherwise the stored
  order with the last batch padded (mask False on the padding).
  """

  def __init__(self, features, labels, *, batch_size, train, seed=0, what="head.batch_size",
               order=None):
    self.features, self.labels, self.order = features, labels, order
    self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
    n = len(features)
    if train and n < self.batch_size:
      raise UserError(f"{what}={self.batch_size} exceeds the {n} training images; lower it")
    self.steps_per_epoch = n // self.batch_size if train else math.ceil(n / self.batch_size)

  def epoch(self, epoch=0, start_batch=0):
    """Iterator of this process's numpy batches for one epoch, from batch start_batch on."""
    size, spe = self.batch_size, self.steps_per_epoch
    local = pipeline.local_batch_size(size)
    order = None
    if self.train and self.order is not None:  # a mixture's weighted draws (data.mixture)
      order = self.order(self.seed, int(epoch))
    rows = feed.epoch_order(len(self.features), spe * size, train=self.train, seed=self.seed,
                            epoch=epoch, order=order)
    index = jax.process_index()
    return feed.batches({"features": self.features, "labels": self.labels}, rows, size=size,
                        steps=spe, start_batch=start_batch,
                        share=slice(index * local, (index + 1) * local),
                        dtypes={"features": np.float32, "labels": np.int8})
