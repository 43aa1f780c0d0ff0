"""Accumulator: gathers evaluation batches (padding masked out) and computes the metrics at the end.

AP and the ranking metrics need every score of a class at once, so the accumulator keeps the batches
(compacted on device to float32 scores and int8 label codes, -1 for unknown) and runs `compute` on
their concatenation: its result equals one call on the unpadded data.
"""
import numpy as np
from jax.experimental import multihost_utils

from mlc_jax.errors import UserError
from mlc_jax.metrics import kernels


def _to_host(array):
  """numpy copy of a device array, gathering the other processes' shards when it spans hosts."""
  if getattr(array, "is_fully_addressable", True):
    return np.asarray(array)
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class Accumulator:
  """Collects (scores, labels, mask) batches of one evaluation; `compute(**kw)` gives `metrics.compute`'s dict."""

  def __init__(self, num_classes):
    """`num_classes`: the C every batch's (B, C) scores and labels must have."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
      raise UserError(f"metrics.Accumulator: num_classes={num_classes!r} must be a positive integer")
    self.num_classes = int(num_classes)
    self._pending = []  # device arrays whose copy to the host is in flight
    self._host = []

  def update(self, scores, labels, mask=None):
    """Adds a batch: scores (B, C) probabilities, labels (B, C) 1/0/-1 (unknown), mask (B,) False on
    padded rows.

    Jitted and non-blocking: the batch is compacted on device and its host copy starts at once.
    """
    shape = getattr(scores, "shape", None)
    if (shape is None or len(shape) != 2 or shape[1] != self.num_classes
        or getattr(labels, "shape", None) != shape):
      raise UserError(f"metrics.Accumulator.update: scores {shape} and labels "
                      f"{getattr(labels, 'shape', None)} must both be (batch, {self.num_classes})")
    if mask is None:
      mask = np.ones(shape[0], bool)
    if getattr(mask, "shape", None) != (shape[0],):
      raise UserError(f"metrics.Accumulator.update: mask shape {getattr(mask, 'shape', None)} must be "
                      f"({shape[0]},), one flag per image")
    packed = kernels.pack(scores, labels, mask)
    for array in packed:
      array.copy_to_host_async()
    # earlier batches have reached the host by now: keep them there, not in device memory
    self._host.extend(tuple(_to_host(a) for a in batch) for batch in self._pending)
    self._pending = [packed]

  @property
  def num_examples(self):
    """Unmasked images added so far (blocks until pending copies land)."""
    self._flush()
    return int(sum(mask.sum() for _, _, mask in self._host))

  def _flush(self):
    self._host.extend(tuple(_to_host(a) for a in batch) for batch in self._pending)
    self._pending = []

  def compute(self, **kwargs):
    """`metrics.compute(scores, labels, **kwargs)` over every unmasked image added so far."""
    from mlc_jax import metrics  # here: mlc_jax.metrics imports this module
    self._flush()
    if not self._host:
      raise UserError("metrics.Accumulator.compute: no batches were added; call update() first")
    scores, labels, mask = (np.concatenate(parts) for parts in zip(*self._host))
    return metrics.compute(scores[mask], labels[mask], **kwargs)

  def reset(self):
    """Forgets every batch (for the next evaluation)."""
    self._pending, self._host = [], []
