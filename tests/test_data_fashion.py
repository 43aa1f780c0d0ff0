"""fashion_collage and fashion_items on tiny IDX files the test writes: labels are the classes of
the items a collage holds, no item is in two splits, the same seed gives the same images, and
missing files are one line saying how to get them."""
import gzip
import struct

import numpy as np
import pytest

from conftest import default_config
from mlc_jax.data import registry
from mlc_jax.data.datasets import fashion
from mlc_jax.errors import UserError

N_TRAIN, N_TEST = 60, 30


def write_idx(path, array, compress):
  """An IDX file from its definition: 0, 0, type 0x08 (uint8), ndim, big-endian dims, data."""
  raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
  path.write_bytes(gzip.compress(raw) if compress else raw)


def write_files(folder):
  """Item k (1..90) is a 28x28 patch of value k: a collage's cells say which items it holds.
  Train items 1-60, test items 61-90; class of item k: k % 10."""
  folder.mkdir(exist_ok=True)
  ids = {"train": np.arange(1, N_TRAIN + 1), "t10k": np.arange(N_TRAIN + 1, N_TRAIN + N_TEST + 1)}
  for prefix, k in ids.items():
    images = np.repeat(k.astype(np.uint8), 28 * 28).reshape(len(k), 28, 28)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress=prefix == "train")
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", (k % 10).astype(np.uint8), compress=False)
  return folder


def config(tmp_path, folder, data_dir, single=False, seed=0):
  c = default_config()
  c.dataset = "fashion_items" if single else "fashion_collage"
  c.data.manual_dir, c.data.data_dir = str(folder), str(tmp_path / data_dir)
  c.data.collage_train, c.data.collage_val, c.data.collage_test = 24, 12, 12
  c.data.collage_val_items, c.data.collage_seed = 20, seed
  return c


def examples(source, split):
  """[(image uint8 56x56x3, multi-hot)] of a split through the pipeline's reader (PNG decoded)."""
  import tensorflow as tf  # noqa: PLC0415
  return [(tf.io.decode_png(ex["image"]).numpy(), ex["labels"])
          for ex in source.read(split).as_numpy_iterator()]


def cells(image):
  """The item ids of a collage's four cells (0 = empty), read from its pixels."""
  assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
  return [int(image[r:r + 28, c:c + 28, 0].max()) for r in (0, 28) for c in (0, 28)
          if image[r:r + 28, c:c + 28, 0].max() > 0]


def test_collage_labels_splits_and_determinism(tmp_path):
  folder = write_files(tmp_path / "files")
  source = registry.get(config(tmp_path, folder, "a"))
  assert source.labels == list(fashion.CLASSES) and source.num_examples == {
      "train": 24, "val": 12, "test": 12}
  seen = {}
  for split in ("train", "val", "test"):
    seen[split] = set()
    for image, target in examples(source, split):
      items = cells(image)
      assert 1 <= len(items) <= 4 and len(set(items)) == len(items)
      want = np.zeros(10, np.int8)
      want[[k % 10 for k in items]] = 1
      np.testing.assert_array_equal(target, want)
      seen[split].update(items)
  assert not seen["train"] & seen["val"]
  assert seen["train"] | seen["val"] <= set(range(1, N_TRAIN + 1))
  assert seen["test"] <= set(range(N_TRAIN + 1, N_TRAIN + N_TEST + 1))
  assert len(seen["val"]) <= 20 and len(seen["train"]) > 20  # val's 20 reserved items, train the rest
  # the same seed in another data_dir: the same images; another seed: others
  again = registry.get(config(tmp_path, folder, "b"))
  other = registry.get(config(tmp_path, folder, "c", seed=1))
  for split in ("train", "test"):
    first = [img for img, _ in examples(source, split)]
    np.testing.assert_array_equal(first, [img for img, _ in examples(again, split)])
    assert not np.array_equal(first, [img for img, _ in examples(other, split)])


def test_items_are_single_label_from_the_same_parts(tmp_path):
  folder = write_files(tmp_path / "files")
  source = registry.get(config(tmp_path, folder, "a", single=True))
  collage = registry.get(config(tmp_path, folder, "b"))
  val_collage = {k for image, _ in examples(collage, "val") for k in cells(image)}
  for split in ("train", "val", "test"):
    for image, target in examples(source, split):
      (item,) = cells(image)
      assert target.sum() == 1 and target[item % 10] == 1
      if split == "train":
        assert item not in val_collage and item <= N_TRAIN
      if split == "test":
        assert item > N_TRAIN


def test_missing_or_bad_files_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError) as e:
    registry.get(config(tmp_path, empty, "a"))
  assert "apt-get install dataset-fashion-mnist" in str(e.value) and "\n" not in str(e.value)
  assert "data.manual_dir" in str(e.value)
  folder = write_files(tmp_path / "files")
  (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x1e" + b"\x01" * 5)
  with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.*damaged"):
    registry.get(config(tmp_path, folder, "b"))


def test_collage_max_items_caps_the_items_per_collage(tmp_path):
  """data.collage_max_items=2: every collage holds 1 or 2 items and both counts occur (the
  default, 4, gives some collages of 3 or 4, as the first test's 48 draws show)."""
  folder = write_files(tmp_path / "files")
  c = config(tmp_path, folder, "a")
  c.data.collage_max_items = 2
  counts = [len(cells(image)) for split in ("train", "test")
            for image, _ in examples(registry.get(c), split)]
  assert set(counts) == {1, 2}
  default = [len(cells(image)) for image, _ in examples(registry.get(config(tmp_path, folder, "b")),
                                                        "train")]
  assert max(default) > 2
