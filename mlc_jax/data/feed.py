"""The one in-memory array feed: an epoch's batches gathered from host arrays by an order of rows.

Used by the pipeline for a split decoded into host memory and by the head stage's feature cache
(mlc_jax.train.features). Training takes the rows of a seeded permutation (or a given order, e.g.
a mixture's weighted draws) with the remainder dropped; otherwise the stored order with the last
batch padded: `mask` False and zeros on the padding, so every row counts exactly once.
"""
import numpy as np


def epoch_order(n, rows, *, train, seed=0, epoch=0, order=None):
  """The first `rows` row numbers of one epoch over n rows (numbers >= n are padding).

  train: `order` (the epoch's rows, drawn by the caller) or a permutation of range(n) seeded by
  (seed, epoch); otherwise range(rows), the stored order.
  """
  if not train:
    return np.arange(rows)
  if order is None:
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
  return np.asarray(order)[:rows]


def batches(arrays, order, *, size, steps, start_batch=0, share=None, where=None, dtypes=None):
  """Batches start_batch..steps-1 of `arrays` ({name: (n, ...) array}): {name, 'mask'[, 'index']}.

  Batch b holds the rows order[b*size:(b+1)*size], of which this process keeps `share` (a slice;
  None: all). Rows numbered n or more are padding: mask False, every array 0 there. where: each
  row's position in the split's stored order, given as 'index' (int32, -1 on padding). dtypes:
  {name: dtype} to cast to (default: the array's own).
  """
  n = len(next(iter(arrays.values())))
  dtypes = dtypes or {}
  for b in range(start_batch, steps):
    rows = order[b * size:(b + 1) * size]
    if share is not None:
      rows = rows[share]
    mask = rows < n
    picked = np.minimum(rows, n - 1)
    batch = {}
    for name, array in arrays.items():
      value = np.asarray(array[picked], dtypes.get(name))
      value[~mask] = 0  # padding: blank rows, no labels
      batch[name] = value
    batch["mask"] = mask
    if where is not None:
      batch["index"] = np.where(mask, where[picked], -1).astype(np.int32)
    yield batch
