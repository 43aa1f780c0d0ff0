"""The bottleneck cache: one forward pass of the frozen backbone over every split.

WORKDIR/features/KEY/{split}_features.npy (float32 (N, D)) and {split}_labels.npy (float32
(N, C)), opened memory-mapped. KEY hashes everything that changes the numbers: the model config,
the backbone's actual parameter values (so the weights file, or the seed of a from-scratch
backbone, is covered exactly), the dataset fingerprint, the image size, the resize method and the
compute dtype. A cache is written to a temporary directory and renamed, so it is valid or absent;
a cache under another key is removed when a new one is built.
"""
import hashlib
import json
import os
import pathlib
import shutil
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
from absl import logging
from flax import nnx

from mlc_jax import sharding, steps
from mlc_jax.data import pipeline

SPLITS = ("train", "val", "test")


def params_digest(module):
  """sha256 of a module's parameter values (names, shapes, bytes), 16 hex digits."""
  h = hashlib.sha256()
  flat = nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat)))
  for path, var in sorted(flat, key=lambda kv: tuple(map(str, kv[0]))):
    # to_host: with param_sharding='fsdp' over several processes no process holds the whole array.
    value = sharding.to_host(var.get_value() if hasattr(var, "get_value") else var.value)
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


def load(directory):
  """{split: (features memmap (N, D), labels (N, C))} of a finished cache."""
  out = {}
  for split in SPLITS:
    f, l = _paths(directory, split)
    out[split] = (np.load(f, mmap_mode="r"), np.load(l, mmap_mode="r"))
  return out


def _write_split(directory, split, source, config, mesh, forward, state):
  # Every process runs the (collective) forward and gathers; only process 0 writes the files.
  write = jax.process_index() == 0
  n = source.num_examples[split]
  dim, classes = None, len(source.labels)
  feats = labels = None
  row = 0
  for batch in pipeline.batches(source, split, batch_size=config.eval_batch_size, train=False,
                                config=config):
    images = sharding.shard_batch({"image": batch["image"]}, mesh)["image"]
    out = sharding.to_host(forward(state, images))
    mask = sharding.to_host(sharding.shard_batch({"m": batch["mask"]}, mesh)["m"]).astype(bool)
    y = sharding.to_host(sharding.shard_batch({"y": batch["labels"]}, mesh)["y"])
    k = int(mask.sum())
    row += k
    if not write:
      continue
    if feats is None:
      dim = out.shape[-1]
      f_path, l_path = _paths(directory, split)
      feats = np.lib.format.open_memmap(f_path, "w+", np.float32, (n, dim))
      labels = np.lib.format.open_memmap(l_path, "w+", np.float32, (n, classes))
    feats[row - k:row] = out[mask]
    labels[row - k:row] = y[mask]
  if row != n:
    raise RuntimeError(f"features of {split}: wrote {row} rows, expected {n}")
  if write:
    feats.flush()
    labels.flush()


def ensure(config, workdir, source, backbone, mesh):
  """The cache directory for (config, source, backbone), built when missing or stale."""
  root = pathlib.Path(workdir) / "features"
  key = cache_key(config, source, backbone)
  directory = root / key
  if (directory / "meta.json").exists():
    logging.info("features: reusing the cache %s", directory)
    return directory
  chief = jax.process_index() == 0
  tmp = root / f".{key}.tmp"
  if chief:
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():  # stale caches (another model/dataset) and half-written ones
      shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir()
  graphdef, state = nnx.split(backbone)
  state = sharding.replicate(state, mesh)
  forward = steps.make_features_step(mesh, graphdef)
  start = time.time()
  for split in SPLITS:
    _write_split(tmp, split, source, config, mesh, forward, state)
    logging.info("features: %s done (%d images, %.0fs)", split, source.num_examples[split],
                 time.time() - start)
  if chief:
    (tmp / "meta.json").write_text(json.dumps({"key": key, "splits": source.num_examples}))
    os.replace(tmp, directory)  # atomic: a kill leaves no half cache under the real key
  if jax.process_count() > 1:  # the others read the cache only once process 0 has published it
    multihost_utils.sync_global_devices("mlc_jax features cache")
  return directory
