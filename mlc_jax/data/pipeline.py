"""tf.data on the host: read, (shuffle), decode, resize, batch, prefetch -> numpy uint8 batches.

Every process reads its own even share of a split (tfds.even_splits) and yields per-process
batches of batch_size // jax.process_count(); all processes yield the same number of batches, so
collectives on the device stay in step. Training shuffles with a seed made of (seed, epoch) and
drops the remainder; evaluation keeps the stored order and pads the last batch, with `mask` False
on the padding, so every image counts exactly once.
"""
import contextlib
import math

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context as tf_context

from mlc_jax.data import images
from mlc_jax.errors import UserError

# TensorFlow only feeds the host pipeline: keep it off any accelerator JAX is using.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised before this import; it is then already set up
  pass


def _process():
  """(index, count) of this JAX process; (0, 1) without JAX's distributed runtime."""
  import jax
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


def _local_count(source, split, index, count):
  """Examples in this process's share of the split."""
  if count == 1:
    return source.num_examples[split]
  import tensorflow_datasets as tfds
  spec = tfds.even_splits(source.splits[split], n=count, drop_remainder=False)[index]
  return int(source.builder.info.splits[spec].num_examples)


def decode_and_resize(image_bytes, image_size, method):
  """Encoded bytes -> uint8 (image_size, image_size, 3), exactly as images.load does it."""
  return images.resize(images.decode(image_bytes), image_size, method)


@_own_tf_seed()
def dataset(source, split, *, batch_size, train, config, seed=0, epoch=0, start_batch=0):
  """The batched tf.data.Dataset behind `batches` (elements: image, labels, mask)."""
  index, count = _process()
  local = local_batch_size(batch_size)
  steps = steps_per_epoch(source, split, batch_size, train)
  if not 0 <= start_batch <= steps:
    raise UserError(f"start_batch={start_batch} is outside the epoch's {steps} batches")
  image_size, method = int(config.image_size), config.data.resize
  if method not in images.RESIZE_METHODS:
    raise UserError(f"data.resize={method!r} is not one of {images.RESIZE_METHODS}")
  n_local = _local_count(source, split, index, count)
  shuffle_seed = epoch_seed(seed, epoch) if train else None
  ds = source.read(split, process_index=index, process_count=count, shuffle_seed=shuffle_seed)
  if train:
    buffer = max(1, min(int(config.data.shuffle_buffer), n_local))
    ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.take(steps * local)
  # Skipping before decoding makes a resume cheap: skipped images are never decoded.
  ds = ds.skip(start_batch * local)

  def prepare(example):
    return {"image": decode_and_resize(example["image"], image_size, method),
            "labels": example["labels"], "mask": tf.constant(True)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if not train:
    real = max(0, n_local - start_batch * local)
    pad = (steps - start_batch) * local - real
    if pad > 0:
      blank = {"image": tf.zeros([image_size, image_size, 3], tf.uint8),
               "labels": tf.zeros([len(source.labels)], tf.float32), "mask": tf.constant(False)}
      ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pad))
  ds = ds.batch(local, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def batches(source, split, *, batch_size, train, config, seed=0, epoch=0, start_batch=0):
  """Iterator of numpy dicts {'image': uint8 (B, H, W, 3), 'labels': float32 (B, C), 'mask': bool (B,)}.

  B = batch_size // jax.process_count(). train: shuffled by (seed, epoch), remainder dropped;
  otherwise stored order with the last batch padded (mask False). start_batch: skip that many
  batches of this epoch (exact resume).
  """
  ds = dataset(source, split, batch_size=batch_size, train=train, config=config, seed=seed,
               epoch=epoch, start_batch=start_batch)
  return ds.as_numpy_iterator()
