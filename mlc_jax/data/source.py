"""`Source`: one dataset's labels, split sizes and a reader of (encoded image, target) pairs.

Every dataset is a TFDS dataset; a Source maps our split names (train/val/test) to TFDS split
strings (e.g. val carved from train as `train[N:]`) and turns the dataset's label fields into an
int8 target per image: 1 present, 0 absent, -1 unknown (a VOC difficult-only object, an image the
protocol leaves out, an entry a partial annotation does not state). Losses and metrics use the
known entries only, so an image whose target is all -1 is left out of both: that is how a
protocol drops images without changing the stored splits. Images stay encoded here: the pipeline
decodes them with mlc_jax.data.pixels so training and prediction see identical pixels.
"""
import hashlib
import json
import logging

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from mlc_jax.data.splits import EVAL_SPLITS, SPLITS  # noqa: F401 - re-exported
from mlc_jax.errors import UserError


def carve(builder, split, val_fraction, *, name):
  """{'train': 'split[:N-k]', 'val': 'split[N-k:]'}, k = round(N * val_fraction), deterministic.

  TFDS shuffles examples when it builds a dataset, so the tail is a random (but fixed) subset.
  """
  if not 0.0 < val_fraction < 1.0:
    raise UserError(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive) for {name}")
  total = builder.info.splits[split].num_examples
  k = max(1, int(round(total * val_fraction)))
  if total - k < 1:
    raise UserError(f"{name}: split {split!r} has {total} examples, too few to carve a validation part")
  return {"train": f"{split}[:{total - k}]", "val": f"{split}[{total - k}:]"}


class Source:
  """A TFDS-backed dataset as the pipeline sees it: the one data contract. A Mixture (data.mixture)
  is a Source made of parts and overrides what differs; the pipeline, the stages and evaluation
  call these methods on any Source and never ask which kind they hold.

  labels: class names; num_examples: {'train', 'val', 'test'} -> stored count; skipped: files left
  out when the dataset was built, as [{'path', 'reason'}]; notes: dataset-specific counts for
  reports; protocol: how the targets were made ({'split', 'unlabeled_images', 'difficult', ...},
  recorded with every evaluation).
  label_fn(example) -> the class ids present; target_fn(example, split) -> int8 (C,) target with
  -1 for unknown entries (default: the multi-hot of label_fn, nothing unknown); unlabeled_unknown:
  the splits whose images without any label are left out (target all -1), as a protocol drops them.
  """

  parts = ()  # one dataset; a Mixture's [(alias, Source)]

  def __init__(self, name, builder, splits, label_fn, labels, *, skipped=(), notes=None, options=None,
               target_fn=None, protocol=None, unlabeled_unknown=()):
    self.name = name
    self.builder = builder
    self.splits = dict(splits)
    self.label_fn = label_fn
    self.labels = list(labels)
    self.skipped = list(skipped)
    self.notes = dict(notes or {})
    self.options = dict(options or {})
    self.target_fn = target_fn
    self.unlabeled_unknown = frozenset(unlabeled_unknown)
    self.protocol = dict(protocol or {})
    self.decoded = {}  # the pipeline's in-memory copies of decoded splits (data.cache_mb)
    self.num_examples = {}
    for split, spec in self.splits.items():
      n = builder.info.splits[spec].num_examples
      if n == 0:
        raise UserError(f"{name}: split {split!r} ({spec}) is empty; check the dataset files or "
                        "the split sizes in the config")
      self.num_examples[split] = int(n)
    if self.skipped:  # each file was logged when the dataset was built; here only the count
      logging.getLogger(__name__).warning(
          "%s: %d unreadable files were left out when the dataset was built (see --mode=data_report)",
          name, len(self.skipped))

  def fingerprint(self):
    """A short hash of what determines the examples: dataset, version, config, splits, options."""
    config = self.builder.builder_config.name if self.builder.builder_config else ""
    key = json.dumps([self.name, str(self.builder.version), config, self.splits, self.labels,
                      self.options, self.num_examples], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]

  def local_count(self, split, index=0, count=1):
    """Examples in process `index`'s share of the split (of `count` processes)."""
    if count == 1:
      return self.num_examples[split]
    spec = tfds.even_splits(self.splits[split], n=count, drop_remainder=False)[index]
    return int(self.builder.info.splits[spec].num_examples)

  def local_offset(self, split, index=0, count=1):
    """Position in the split's stored order of this share's first example (shares are contiguous)."""
    return sum(self.local_count(split, i, count) for i in range(index))

  def positions(self, split, index=0, count=1):
    """int64 stored positions of process `index`'s share, in the order `read` yields it."""
    start = self.local_offset(split, index, count)
    return np.arange(start, start + self.local_count(split, index, count))

  def train_order(self, seed, epoch, index=0, count=1, split="train"):
    """Indices into this share (as `read` yields it) of one training epoch: a permutation
    seeded by (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(
        self.local_count(split, index, count))

  def read(self, split, *, process_index=0, process_count=1, shuffle_seed=None):
    """tf.data.Dataset of {'image': encoded bytes, 'labels': int8 (C,) target (1/0/-1)}.

    process_index/count: this process's even share of the split (tfds.even_splits).
    shuffle_seed: shuffle the order of files deterministically; None keeps the stored order.
    """
    if split not in self.splits:
      raise UserError(f"{self.name} has no split {split!r}; it has {sorted(self.splits)}")
    spec = self.splits[split]
    if process_count > 1:
      spec = tfds.even_splits(spec, n=process_count, drop_remainder=False)[process_index]
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, add_tfds_id=False)
    ds = self.builder.as_dataset(split=spec, shuffle_files=shuffle_seed is not None,
                                 read_config=read_config,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    def convert(example):
      return {"image": example["image"], "labels": self.targets(example, split)}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def targets(self, example, split):
    """int8 (C,) target of one stored example of `split` (inside tf.data): 1, 0 or -1 unknown."""
    if self.target_fn is not None:
      target = tf.reshape(tf.cast(self.target_fn(example, split), tf.int8), [len(self.labels)])
    else:
      target = tf.cast(self.multi_hot(example), tf.int8)
    if split in self.unlabeled_unknown:  # no positive: the image is left out (no loss, no metric)
      target = tf.where(tf.reduce_any(target == 1), target, tf.constant(-1, tf.int8))
    return target

  def multi_hot(self, example):
    """float32 (C,) multi-hot of the class ids label_fn gives (inside tf.data)."""
    return multi_hot(self.label_fn(example), len(self.labels))

  def label_matrix(self, split):
    """int8 (N, C) numpy targets of a split, in stored order (no image decoding)."""
    rows = [ex["labels"] for ex in self.read(split).map(lambda e: {"labels": e["labels"]}).as_numpy_iterator()]
    return np.stack(rows) if rows else np.zeros((0, len(self.labels)), np.int8)


def multi_hot(ids, num_classes):
  """float32 (C,) multi-hot of a vector of class ids (inside tf.data)."""
  hot = tf.minimum(tf.reduce_sum(tf.one_hot(tf.cast(ids, tf.int32), num_classes), axis=0), 1.0)
  return tf.reshape(hot, [num_classes])



def tfds_builder(config, hint):
  """tfds.builder(config.dataset, data_dir=config.data.data_dir) for a dataset TFDS ships."""
  try:
    return tfds.builder(config.dataset, data_dir=config.data.data_dir or None)
  except Exception as e:  # TFDS raises several types for an unknown or unreadable builder
    raise UserError(f"TFDS dataset {config.dataset} cannot be opened: {e}. {hint}") from None


def prepare(builder, *, name, manual_dir=None, hint=""):
  """download_and_prepare the builder once (later calls reuse the files in data_dir).

  With several processes, process 0 prepares and the others wait for it, then read what it built.
  """
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  if jax.process_count() == 1:
    return _prepare(builder, config, name, hint)
  if jax.process_index() == 0:
    _prepare(builder, config, name, hint)
  multihost_utils.sync_global_devices(f"mlc_jax prepare {name}")
  if jax.process_index() != 0:
    builder.info.read_from_directory(builder.data_dir)  # built after this builder was made
  return builder


def _prepare(builder, config, name, hint):
  try:
    builder.download_and_prepare(download_config=config)
  except UserError:
    raise
  except (AssertionError, FileNotFoundError, tfds.core.download.DownloadError) as e:
    raise UserError(f"dataset {name} could not be prepared in {builder.data_dir}: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. {hint}") from None
  return builder
