"""The shapes dataset and the tf.data pipeline: determinism, padding, shuffling, resume, slicing."""
import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mlc_jax.data import pipeline, registry, shapes


def _collect(it):
  """Concatenate an iterator of batches into one dict of arrays."""
  batches = list(it)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, len(batches)


def test_shapes_same_seed_same_bytes():
  a = [shapes.encode_png(shapes.render(3, "train", i, 64)[0]) for i in range(3)]
  b = [shapes.encode_png(shapes.render(3, "train", i, 64)[0]) for i in range(3)]
  c = [shapes.encode_png(shapes.render(4, "train", i, 64)[0]) for i in range(3)]
  assert a == b and a != c
  assert len(shapes.CLASSES) >= 8 and {"disc", "ring", "square", "rectangle_outline"} <= set(shapes.CLASSES)


def test_shapes_labels_and_stored_bytes(shapes_config):
  source = registry.get(shapes_config)
  assert source.num_examples == {"train": 96, "val": 32, "test": 32}
  ds = source.builder.as_dataset(split="val", decoders={"image": tfds.decode.SkipDecoding()})
  counts = []
  for ex in ds.as_numpy_iterator():
    index = int(ex["image/filename"].decode().split("/")[1].split(".")[0])
    array, labels = shapes.render(0, "val", index, 32)
    assert ex["image"] == shapes.encode_png(array)  # the stored file is exactly the rendered one
    assert sorted(ex["labels"].tolist()) == labels
    counts.append(len(labels))
  assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1


def test_eval_pads_and_counts_each_image_once(shapes_config):
  source = registry.get(shapes_config)
  got, steps = _collect(pipeline.batches(source, "val", batch_size=12, train=False, config=shapes_config))
  assert steps == pipeline.steps_per_epoch(source, "val", 12, False) == 3
  assert got["mask"].sum() == 32 and not got["mask"][32:].any() and got["image"].shape[0] == 36
  # Reference: PIL decodes of the stored PNGs and hand-made multi-hot rows, in stored order.
  ds = source.builder.as_dataset(split="val", decoders={"image": tfds.decode.SkipDecoding()})
  for row, ex in enumerate(ds.as_numpy_iterator()):
    np.testing.assert_array_equal(got["image"][row], np.asarray(Image.open(io.BytesIO(ex["image"])).convert("RGB")))
    expected = np.zeros(len(shapes.CLASSES), np.float32)
    expected[ex["labels"]] = 1
    np.testing.assert_array_equal(got["labels"][row], expected)
  assert not got["labels"][32:].any() and not got["image"][32:].any()


def test_train_shuffle_seeded_drop_remainder_and_resume(shapes_config):
  source = registry.get(shapes_config)
  kw = dict(batch_size=20, train=True, config=shapes_config, seed=1)
  a, steps = _collect(pipeline.batches(source, "train", epoch=0, **kw))
  b, _ = _collect(pipeline.batches(source, "train", epoch=0, **kw))
  c, _ = _collect(pipeline.batches(source, "train", epoch=1, **kw))
  assert steps == 96 // 20 and a["image"].shape[0] == 80 and a["mask"].all()
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["image"], c["image"])
  tail, tail_steps = _collect(pipeline.batches(source, "train", epoch=0, start_batch=2, **kw))
  assert tail_steps == steps - 2
  np.testing.assert_array_equal(tail["image"], a["image"][40:])
  np.testing.assert_array_equal(tail["labels"], a["labels"][40:])


def test_train_order_ignores_tensorflows_global_seed(shapes_config):
  # A seed set by the user or a library (Keras does) must not change the order: resume would break.
  import tensorflow as tf
  from tensorflow.python.eager import context
  source = registry.get(shapes_config)
  kw = dict(batch_size=20, train=True, config=shapes_config, seed=1, epoch=3)
  orders = []
  for global_seed in (1, 2):
    tf.random.set_seed(global_seed)
    orders.append(_collect(pipeline.batches(source, "train", **kw))[0]["labels"])
    assert context.global_seed() == global_seed  # the caller's seed is put back
  np.testing.assert_array_equal(orders[0], orders[1])


def test_each_process_reads_its_own_slice(shapes_config, monkeypatch):
  source = registry.get(shapes_config)
  whole, _ = _collect(pipeline.batches(source, "test", batch_size=8, train=False, config=shapes_config))
  parts = []
  for index in range(3):
    monkeypatch.setattr(pipeline, "_process", lambda index=index: (index, 3))
    part, steps = _collect(pipeline.batches(source, "test", batch_size=12, train=False, config=shapes_config))
    assert steps == 3 and part["image"].shape[0] == 12  # same number of batches in every process
    parts.append(part["image"][part["mask"]])
  joined = np.concatenate(parts)
  assert joined.shape[0] == 32
  key = lambda x: sorted(map(bytes, x))
  assert key(joined) == key(whole["image"][whole["mask"]])


def test_bad_batch_and_start_are_user_errors(shapes_config):
  from mlc_jax.errors import UserError
  source = registry.get(shapes_config)
  with pytest.raises(UserError, match="fewer than one training batch"):
    pipeline.steps_per_epoch(source, "val", 64, True)
  with pytest.raises(UserError, match="start_batch"):
    next(pipeline.batches(source, "val", batch_size=8, train=False, config=shapes_config, start_batch=9))


def test_crop_resize_matches_images_load(shapes_config):
  from mlc_jax.data import images
  config = shapes_config.copy_and_resolve_references()
  config.image_size, config.data.resize = 24, "crop"
  source = registry.get(config)
  batch = next(pipeline.batches(source, "test", batch_size=4, train=False, config=config))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.uint8
  ds = source.builder.as_dataset(split="test", decoders={"image": tfds.decode.SkipDecoding()})
  first = next(ds.as_numpy_iterator())["image"]
  pil = Image.open(io.BytesIO(first)).convert("RGB")  # the prediction path: a PIL image in
  np.testing.assert_array_equal(batch["image"][0], images.load(pil, 24, "crop"))
