"""The shapes dataset and the tf.data pipeline: determinism, padding, shuffling, resume, slicing.

The batch contract is tested on both paths: splits streamed through tf.data every epoch
(data.cache_mb=0) and splits decoded once and served from host memory (the default for small ones).
"""
import io

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mlc_jax.data import pipeline, registry
from mlc_jax.data.datasets import shapes


@pytest.fixture(params=["stream", "memory"])
def path_config(request, shapes_config):
  """shapes_config on one of the two input paths."""
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.data.cache_mb = 0 if request.param == "stream" else 64
  return c


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


def test_shapes_single_one_shape_of_sixteen_through_the_pipeline(shapes_config):
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.dataset, c.data.shapes_train, c.data.shapes_val, c.data.shapes_test = "shapes_single", 160, 8, 8
  source = registry.get(c)
  assert source.labels[:8] == list(shapes.CLASSES) and len(source.labels) == 16
  assert len(set(source.labels)) == 16
  got, _ = _collect(pipeline.batches(source, "train", batch_size=16, train=False, config=c))
  targets = got["labels"][got["mask"]]
  assert targets.shape == (160, 16) and (targets.sum(axis=1) == 1).all()  # exactly one label
  assert (targets.sum(axis=0) > 0).all()  # every class drawn within 160 images
  ds = source.builder.as_dataset(split="val", decoders={"image": tfds.decode.SkipDecoding()})
  for ex in ds.as_numpy_iterator():
    index = int(ex["image/filename"].decode().split("/")[1].split(".")[0])
    array, labels = shapes.render_single(0, "val", index, 32)
    assert ex["image"] == shapes.encode_png(array) and ex["labels"].tolist() == labels
    assert not np.array_equal(array, shapes.render(0, "val", index, 32)[0])  # its own stream


def test_shapes_drawn_in_worker_processes_are_the_rendered_ones(tmp_path):
  # 600 images: enough for the builder to draw them in a pool of spawned processes.
  builder = shapes.Shapes(config=shapes.shapes_config(16, 5, (600, 1, 1)), data_dir=str(tmp_path))
  builder.download_and_prepare()
  ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  seen = 0
  for ex in ds.as_numpy_iterator():
    index = int(ex["image/filename"].decode().split("/")[1].split(".")[0])
    array, labels = shapes.render(5, "train", index, 16)
    assert ex["image"] == shapes.encode_png(array) and sorted(ex["labels"].tolist()) == labels
    seen += 1
  assert seen == 600


def test_eval_pads_and_counts_each_image_once(path_config):
  source = registry.get(path_config)
  got, steps = _collect(pipeline.batches(source, "val", batch_size=12, train=False, config=path_config))
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


def test_train_shuffle_seeded_drop_remainder_and_resume(path_config):
  source = registry.get(path_config)
  kw = dict(batch_size=20, train=True, config=path_config, seed=1)
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


def test_train_order_ignores_tensorflows_global_seed(path_config):
  # A seed set by the user or a library (Keras does) must not change the order: resume would break.
  import tensorflow as tf
  from tensorflow.python.eager import context
  source = registry.get(path_config)
  kw = dict(batch_size=20, train=True, config=path_config, seed=1, epoch=3)
  orders = []
  for global_seed in (1, 2):
    tf.random.set_seed(global_seed)
    orders.append(_collect(pipeline.batches(source, "train", **kw))[0]["labels"])
    assert context.global_seed() == global_seed  # the caller's seed is put back
  np.testing.assert_array_equal(orders[0], orders[1])


def test_each_process_reads_its_own_slice(path_config, monkeypatch):
  source = registry.get(path_config)
  whole, _ = _collect(pipeline.batches(source, "test", batch_size=8, train=False, config=path_config))
  parts = []
  for index in range(3):
    monkeypatch.setattr(pipeline, "_process", lambda index=index: (index, 3))
    part, steps = _collect(pipeline.batches(source, "test", batch_size=12, train=False, config=path_config))
    assert steps == 3 and part["image"].shape[0] == 12  # same number of batches in every process
    parts.append(part["image"][part["mask"]])
  joined = np.concatenate(parts)
  assert joined.shape[0] == 32
  key = lambda x: sorted(map(bytes, x))
  assert key(joined) == key(whole["image"][whole["mask"]])


def test_bad_batch_and_start_are_user_errors(path_config):
  from mlc_jax.errors import UserError
  source = registry.get(path_config)
  with pytest.raises(UserError, match="fewer than one training batch"):
    pipeline.steps_per_epoch(source, "val", 64, True)
  with pytest.raises(UserError, match="start_batch"):
    next(pipeline.batches(source, "val", batch_size=8, train=False, config=path_config, start_batch=9))


def test_crop_resize_matches_images_load(path_config):
  from mlc_jax.data import pixels as images
  config = path_config.copy_and_resolve_references()
  config.image_size, config.data.resize = 24, "crop"
  source = registry.get(config)
  batch = next(pipeline.batches(source, "test", batch_size=4, train=False, config=config))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.uint8
  ds = source.builder.as_dataset(split="test", decoders={"image": tfds.decode.SkipDecoding()})
  first = next(ds.as_numpy_iterator())["image"]
  pil = Image.open(io.BytesIO(first)).convert("RGB")  # the prediction path: a PIL image in
  np.testing.assert_array_equal(batch["image"][0], images.load(pil, 24, "crop"))


def test_memory_path_serves_the_streamed_pixels_and_decodes_once(shapes_config, monkeypatch):
  stream = ml_collections.ConfigDict(shapes_config.to_dict())
  stream.data.cache_mb = 0
  memory = ml_collections.ConfigDict(shapes_config.to_dict())
  memory.data.cache_mb = 64
  reference, _ = _collect(pipeline.batches(registry.get(stream), "train", batch_size=16,
                                           train=False, config=stream))
  source = registry.get(memory)
  built = []
  real = pipeline.dataset
  monkeypatch.setattr(pipeline, "dataset", lambda *a, **k: built.append(a[1]) or real(*a, **k))
  stored, _ = _collect(pipeline.batches(source, "train", batch_size=16, train=False, config=memory))
  for k in ("image", "labels", "mask"):  # stored order: the very arrays tf.data decodes
    np.testing.assert_array_equal(stored[k], reference[k])
  by_pixels = {bytes(img): lab for img, lab in zip(reference["image"], reference["labels"])}
  orders = []
  for epoch in (0, 1):
    got, steps = _collect(pipeline.batches(source, "train", batch_size=20, train=True,
                                           config=memory, seed=1, epoch=epoch))
    assert steps == 4 and got["mask"].all()
    assert len({bytes(img) for img in got["image"]}) == 80  # no image twice in an epoch
    for img, lab in zip(got["image"], got["labels"]):  # each image keeps its own labels
      np.testing.assert_array_equal(lab, by_pixels[bytes(img)])
    orders.append(got["labels"])
  assert not np.array_equal(orders[0], orders[1])
  assert built == ["train"]  # decoded once for every pass above
  big = ml_collections.ConfigDict(memory.to_dict())
  big.data.cache_mb = 96 * 32 * 32 * 3 / 2 ** 20 * 0.99  # just under the split's decoded size
  assert pipeline.decoded_split(registry.get(big), "train", big) is None
