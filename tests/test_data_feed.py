"""mlc_jax.data.feed, the one in-memory array feed, and the head stage's feed built on it."""
import jax
import numpy as np

from mlc_jax.data import feed
from mlc_jax.train import features


def _rows(n):
  return {"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 1, "y": np.arange(n) + 100}


def test_evaluation_keeps_stored_order_and_pads_the_last_batch():
  # 5 rows in batches of 2: [0 1] [2 3] [4 pad]; padding is 0 everywhere, masked, index -1.
  arrays = _rows(5)
  order = feed.epoch_order(5, 6, train=False)
  got = list(feed.batches(arrays, order, size=2, steps=3, where=np.arange(10, 15)))
  assert [b["mask"].tolist() for b in got] == [[True, True], [True, True], [True, False]]
  assert [b["index"].tolist() for b in got] == [[10, 11], [12, 13], [14, -1]]
  assert [b["y"].tolist() for b in got] == [[100, 101], [102, 103], [104, 0]]
  np.testing.assert_array_equal(got[2]["x"], [[9, 10], [0, 0]])
  assert arrays["x"][4, 0] == 9  # the source rows are never written
  # start_batch skips whole batches
  assert [b["y"].tolist() for b in feed.batches(arrays, order, size=2, steps=3, start_batch=2)] \
      == [[104, 0]]


def test_training_draws_each_row_once_per_epoch_seeded_and_drops_the_remainder():
  arrays = _rows(7)
  epochs = []
  for epoch in (0, 1):
    order = feed.epoch_order(7, 6, train=True, seed=3, epoch=epoch)
    rows = np.concatenate([b["y"] for b in feed.batches(arrays, order, size=3, steps=2)]) - 100
    assert len(set(rows.tolist())) == 6 and set(rows.tolist()) <= set(range(7))
    again = feed.epoch_order(7, 6, train=True, seed=3, epoch=epoch)
    np.testing.assert_array_equal(order, again)
    epochs.append(rows.tolist())
  assert epochs[0] != epochs[1]  # each epoch its own order
  given = feed.epoch_order(7, 4, train=True, order=np.array([6, 6, 2, 0, 5]))
  assert given.tolist() == [6, 6, 2, 0]  # a caller's draws (a mixture), cut to the epoch


def test_each_process_feeds_its_slice_of_the_one_global_batch(monkeypatch):
  # features.Feed with 2 (simulated) processes: the two slices, side by side, are the batches
  # of a 1-process run, for training and (padded) evaluation alike.
  x = np.arange(22 * 3, dtype=np.float32).reshape(22, 3)
  y = (np.arange(22 * 4).reshape(22, 4) % 3 == 0).astype(np.int8)
  for train in (True, False):
    one = list(features.Feed(x, y, batch_size=8, train=train, seed=1).epoch(2))
    parts = []
    for index in (0, 1):
      monkeypatch.setattr(jax, "process_count", lambda: 2)
      monkeypatch.setattr(jax, "process_index", lambda index=index: index)
      parts.append(list(features.Feed(x, y, batch_size=8, train=train, seed=1).epoch(2)))
      monkeypatch.undo()
    assert len(one) == (2 if train else 3)
    for whole, first, second in zip(one, *parts):
      for key in ("features", "labels", "mask"):
        np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
    if not train:  # 22 rows: the last batch holds 6 and 2 padding rows of zeros
      assert one[-1]["mask"].sum() == 6 and not one[-1]["features"][6:].any()
      np.testing.assert_array_equal(np.concatenate([b["features"] for b in one])[:22], x)
