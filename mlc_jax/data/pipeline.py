"""tf.data on the host: read, (shuffle), decode, resize, batch, prefetch -> numpy uint8 batches.

Every process reads its own even share of a split (tfds.even_splits) and yields per-process
batches of batch_size // jax.process_count(); all processes yield the same number of batches, so
collectives on the device stay in step. Training shuffles with a seed made of (seed, epoch) and
drops the remainder; evaluation keeps the stored order and pads the last batch, with `mask` False
on the padding, so every image counts exactly once.

A split whose decoded images fit in `data.cache_mb` is decoded once (by the same tf.data
functions, in stored order) and then served from host memory: each training epoch is a seeded
permutation of it, so no image is decoded twice in a run and no tf.data iterator is made per
epoch (tearing one down with autotuning on can stall the caller for seconds).
"""
import contextlib
import math
import os

import jax
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context as tf_context

from mlc_jax.data import feed, pixels
from mlc_jax.errors import UserError

def host_cores():
  """The CPU cores this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


PREFETCH_BATCHES = 4  # host batches decoded ahead of the step
# Parallel decodes: one per core (tf.data's AUTOTUNE without autotuning would stop at 16, too
# few to feed a GPU from a large host).
DECODE_THREADS = host_cores()


def _process():
  """(index, count) of this JAX process; (0, 1) without JAX's distributed runtime."""
  return jax.process_index(), jax.process_count()


def epoch_seed(seed, epoch):
  """A 31-bit seed from (seed, epoch): each epoch its own order, reproducible for resume."""
  return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


@contextlib.contextmanager
def _own_tf_seed():
  """Pins TensorFlow's global seed while a pipeline is built, then puts the caller's back.

  tf.data mixes an op's seed with the global one (tf.random.set_seed), so without this a seed set
  by the user, or by any library in the process, would change the data order and a resumed run
  would not see the batches an uninterrupted one saw.
  """
  previous = tf_context.global_seed()
  tf.random.set_seed(87654321)  # TensorFlow's own default, what an unset global seed means
  try:
    yield
  finally:
    tf.random.set_seed(previous)


def local_batch_size(batch_size):
  """This process's share of the global batch."""
  _, count = _process()
  if batch_size < 1 or batch_size % count:
    raise UserError(f"batch size {batch_size} must be a positive multiple of the number of "
                    f"processes ({count})")
  return batch_size // count


def steps_per_epoch(source, split, batch_size, train):
  """Batches per epoch: floor(n / batch) when training (remainder dropped), else ceil (padded)."""
  n = source.num_examples[split]
  if train:
    if n < batch_size:
      raise UserError(f"{source.name} split {split!r} has {n} images, fewer than one training batch "
                      f"of {batch_size}; lower the batch size")
    return n // batch_size
  return math.ceil(n / batch_size)


def decode_and_resize(image_bytes, image_size, method):
  """Encoded bytes -> uint8 (image_size, image_size, 3), exactly as pixels.load does it."""
  return pixels.resize(pixels.decode(image_bytes), image_size, method)


def _check(source, split, batch_size, train, config, start_batch):
  """(local batch, steps, image size, resize method), or UserError on a bad request (data.resize
  is config.validate's to check)."""
  local = local_batch_size(batch_size)
  steps = steps_per_epoch(source, split, batch_size, train)
  if not 0 <= start_batch <= steps:
    raise UserError(f"start_batch={start_batch} is outside the epoch's {steps} batches")
  return local, steps, int(config.image_size), config.data.resize


@_own_tf_seed()
def dataset(source, split, *, batch_size, train, config, seed=0, epoch=0, start_batch=0):
  """The batched tf.data.Dataset behind `batches` (elements: image, labels, mask[, index])."""
  index, count = _process()
  local, steps, image_size, method = _check(source, split, batch_size, train, config, start_batch)
  n_local = source.local_count(split, index, count)
  shuffle_seed = epoch_seed(seed, epoch) if train else None
  ds = source.read(split, process_index=index, process_count=count, shuffle_seed=shuffle_seed)
  if train:
    buffer = max(1, min(int(config.data.shuffle_buffer), n_local))
    ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(steps * local)
  else:  # each example's position in the split's stored order, whatever the process count
    where = tf.constant(source.positions(split, index, count), tf.int32)
    ds = ds.enumerate().map(lambda i, ex: dict(ex, index=tf.gather(where, i)))
  # Skipping before decoding makes a resume cheap: skipped images are never decoded.
  ds = ds.skip(start_batch * local)

  def prepare(example):
    out = {"image": decode_and_resize(example["image"], image_size, method),
           "labels": example["labels"], "mask": tf.constant(True)}
    if not train:
      out["index"] = example["index"]
    return out

  ds = ds.map(prepare, num_parallel_calls=DECODE_THREADS, deterministic=True)
  if not train:
    real = max(0, n_local - start_batch * local)
    pad = (steps - start_batch) * local - real
    if pad > 0:
      blank = {"image": tf.zeros([image_size, image_size, 3], tf.uint8),
               "labels": tf.zeros([len(source.labels)], tf.int8), "mask": tf.constant(False),
               "index": tf.constant(-1, tf.int32)}
      ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pad))
  ds = ds.batch(local, drop_remainder=True, num_parallel_calls=DECODE_THREADS)
  options = tf.data.Options()
  options.deterministic = True
  # Autotuning off: with it on, tearing down an exhausted iterator (every epoch, every
  # evaluation pass) blocked the training loop for ~20 s in about half the epochs (TF 2.21,
  # measured in the demo). Parallelism is set above instead.
  options.autotune.enabled = False
  return ds.with_options(options).prefetch(PREFETCH_BATCHES)


def decoded_split(source, split, config):
  """(images uint8 (n, S, S, 3), labels int8 (n, C)): this process's share of split, decoded
  once in stored order and kept on the source; None when it would exceed data.cache_mb."""
  index, count = _process()
  size, method = int(config.image_size), config.data.resize
  n = source.local_count(split, index, count)
  if n == 0 or n * size * size * 3 > float(config.data.get("cache_mb", 0)) * 2 ** 20:
    return None
  key = (split, size, method, index, count)
  if key not in source.decoded:
    stored = dataset(source, split, batch_size=min(256, n) * count, train=False, config=config)
    parts = [(b["image"][b["mask"]], b["labels"][b["mask"]]) for b in stored.as_numpy_iterator()]
    source.decoded[key] = tuple(np.concatenate(p) for p in zip(*parts))
  return source.decoded[key]


def _from_memory(decoded, *, local, steps, train, seed, epoch, start_batch, where, order=None):
  """The batches of one epoch gathered from a decoded split (same contract as tf.data's).

  where: each decoded row's stored position; order: the epoch's training order (a mixture's
  weighted draws), default a seeded permutation of this process's share (data.feed)."""
  images_, labels = decoded
  rows = feed.epoch_order(len(images_), steps * local, train=train, seed=seed, epoch=epoch,
                          order=order)
  return feed.batches({"image": images_, "labels": labels}, rows, size=local, steps=steps,
                      start_batch=start_batch, where=None if train else where)


def batches(source, split, *, batch_size, train, config, seed=0, epoch=0, start_batch=0):
  """Iterator of numpy dicts {'image': uint8 (B, H, W, 3), 'labels': int8 (B, C), 'mask': bool (B,)}.

  B = batch_size // jax.process_count(). train: shuffled by (seed, epoch), remainder dropped;
  otherwise stored order with the last batch padded (mask False) and 'index': int32 (B,), each
  image's position in the split's stored order (-1 on padding), so results gathered from several
  processes can be put back in that order. start_batch: skip that many batches of this epoch
  (exact resume). Splits within data.cache_mb come from host memory.
  """
  local, steps, _, _ = _check(source, split, batch_size, train, config, start_batch)
  decoded = decoded_split(source, split, config)
  if decoded is not None:
    index, count = _process()
    order = source.train_order(seed, epoch, index, count, split) if train else None
    return _from_memory(decoded, local=local, steps=steps, train=train, seed=seed, epoch=epoch,
                        start_batch=start_batch, where=source.positions(split, index, count),
                        order=order)
  ds = dataset(source, split, batch_size=batch_size, train=train, config=config, seed=seed,
               epoch=epoch, start_batch=start_batch)
  return ds.as_numpy_iterator()


class Feed:
  """One split of a Source as a training loop consumes it: `steps_per_epoch`, `epoch(e, start)`."""

  def __init__(self, source, split, *, batch_size, train, config, seed=0):
    self.source, self.split, self.config = source, split, config
    self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
    self.steps_per_epoch = steps_per_epoch(source, split, self.batch_size, self.train)

  def epoch(self, epoch=0, start_batch=0):
    """This process's numpy batches of one epoch (see `batches`), from batch start_batch on."""
    return batches(self.source, self.split, batch_size=self.batch_size, train=self.train,
                   config=self.config, seed=self.seed, epoch=epoch, start_batch=start_batch)
