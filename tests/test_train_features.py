"""mlc_jax.train.features.Feed: the head stage's batches of cached features, by hand with numpy."""
import numpy as np
import pytest

from mlc_jax.errors import UserError
from mlc_jax.train import features


def _cache(n=23, dim=3):
  x = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
  y = (np.arange(n * 2).reshape(n, 2) % 3 == 0).astype(np.int8)
  return x, y


def test_train_feed_order_drop_remainder_and_resume_offset():
  """train: epoch e takes numpy's permutation seeded [seed, e], drops the remainder (23 rows in
  batches of 5: 4 steps, 20 rows); start_batch = 2 (a resume) yields exactly batches 2 and 3."""
  x, y = _cache()
  feed = features.Feed(x, y, batch_size=5, train=True, seed=7)
  assert feed.steps_per_epoch == 4
  for epoch in (0, 3):
    order = np.random.default_rng([7, epoch]).permutation(23)[:20]
    got = np.concatenate([b["features"] for b in feed.epoch(epoch)])
    np.testing.assert_array_equal(got, x[order])
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in feed.epoch(epoch)]),
                                  y[order])
    tail = list(feed.epoch(epoch, start_batch=2))
    assert len(tail) == 2
    np.testing.assert_array_equal(np.concatenate([b["features"] for b in tail]), x[order[10:]])
  assert not np.array_equal(next(feed.epoch(0))["features"], next(feed.epoch(1))["features"])
  with pytest.raises(UserError, match="head.batch_size=30 exceeds the 23"):
    features.Feed(x, y, batch_size=30, train=True)


def test_eval_feed_is_stored_order_with_a_masked_padded_last_batch():
  """not train: every row once in stored order, the last batch padded (mask False, zeros)."""
  x, y = _cache()
  feed = features.Feed(x, y, batch_size=5, train=False)
  batches = list(feed.epoch())
  assert feed.steps_per_epoch == 5 and len(batches) == 5
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 23 and not mask[23:].any()
  np.testing.assert_array_equal(np.concatenate([b["features"] for b in batches])[:23], x)
  assert not np.concatenate([b["features"] for b in batches])[23:].any()
