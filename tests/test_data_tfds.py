"""COCO and VOC through the registry and the pipeline, on TFDS mock data.

tfds.testing.mock_data serves examples we make here (consistent objects, labels and difficult
flags, split sizes from metadata we write), so the expected multi-hot targets are computed by
hand from the raw examples, independently of mlc_jax.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from conftest import default_config
from mlc_jax.data import pipeline, registry

COUNTS = {"train": 12, "validation": 7, "test": 5}


def _write_metadata(name, data_dir):
  """dataset_info.json with our split sizes, so the Source sees real counts under the mock."""
  b = tfds.builder(name, data_dir=data_dir)
  template = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
  infos = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                               filename_template=tfds.core.ShardedFileTemplate(
                                   data_dir=b.data_dir, template=template, dataset_name=b.name,
                                   split=s, filetype_suffix="tfrecord"))
           for s, n in COUNTS.items()]
  b.info.set_splits(tfds.core.SplitDict(infos))
  os.makedirs(b.data_dir, exist_ok=True)
  b.info.write_to_directory(b.data_dir)


def _example(features, split, index):
  """A consistent fake example: 1-4 objects, sorted boxes, VOC label sets from the objects."""
  rng = np.random.default_rng([len(split), index])
  ex = mocking.RandomFakeGenerator(features, 1, constant_dynamic_shape=True, seed=index)[index]
  k = int(rng.integers(1, 5))
  objects = {key: value[:k] for key, value in ex["objects"].items()}
  y, x = np.sort(rng.random((k, 2)), 1), np.sort(rng.random((k, 2)), 1)
  objects["bbox"] = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], 1).astype(np.float32)
  ex["objects"] = objects
  if "labels_no_difficult" in ex:
    difficult = objects["is_difficult"]
    ex["labels"] = np.unique(objects["label"])
    ex["labels_no_difficult"] = np.unique(objects["label"][~difficult])
  return ex


def _split_examples(features, split):
  """The examples of a TFDS split string such as 'train[:11]' or 'train+validation[:5]'."""
  out = []
  for part in str(split).split("+"):
    name, _, rest = part.partition("[")
    items = [_example(features, name, i) for i in range(COUNTS[name])]
    if rest:
      start, _, stop = rest.rstrip("]").partition(":")
      items = items[int(start) if start else None:int(stop) if stop else None]
    out += items
  return out


def _as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """Mock of DatasetBuilder._as_dataset honouring split sizes and slices."""
  del read_config, kwargs
  features = self.info.features
  examples = [features.encode_example(ex) for ex in _split_examples(features, split)]
  specs = features.get_serialized_info()
  signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), specs)
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
  return ds.map(lambda e: features.decode_example(e, decoders=decoders))


def _expected(builder, spec, key):
  """Multi-hot targets of a split computed by hand from the raw examples."""
  features = builder.info.features
  num_classes = features["objects"]["label"].num_classes
  rows = []
  for ex in _split_examples(features, spec):
    row = np.zeros(num_classes, np.float32)
    row[ex[key] if key else ex["objects"]["label"]] = 1.0
    rows.append(row)
  return np.stack(rows)


@pytest.mark.parametrize("name,classes,key,difficult", [
    ("coco/2014", 80, None, True),
    ("voc/2007", 20, "labels", True),
    ("voc/2007", 20, "labels_no_difficult", False),
    ("voc/2012", 20, "labels_no_difficult", False),
])
def test_tfds_source_through_pipeline(tmp_path, name, classes, key, difficult):
  _write_metadata(name, str(tmp_path))
  config = default_config()
  config.dataset, config.image_size = name, 24
  config.data.data_dir, config.data.include_difficult = str(tmp_path), difficult
  config.data.val_fraction = 0.2
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path),
                              as_dataset_fn=_as_dataset):
    source = registry.get(config)
    assert len(source.labels) == classes
    total_train = COUNTS["train"] + (COUNTS["validation"] if name == "voc/2007" else 0)
    assert source.num_examples["train"] + source.num_examples["val"] == total_train
    assert source.num_examples["val"] == round(total_train * 0.2)
    assert source.num_examples["test"] == COUNTS["test" if name == "voc/2007" else "validation"]
    for split in ("val", "test"):
      got = list(pipeline.batches(source, split, batch_size=4, train=False, config=config))
      images = np.concatenate([b["image"] for b in got])
      labels = np.concatenate([b["labels"] for b in got])
      mask = np.concatenate([b["mask"] for b in got])
      assert images.shape[1:] == (24, 24, 3) and images.dtype == np.uint8
      assert labels.shape[1] == classes and labels.dtype == np.float32
      np.testing.assert_array_equal(labels[mask], _expected(source.builder, source.splits[split], key))
      assert not labels[~mask].any()
    batch = next(pipeline.batches(source, "train", batch_size=4, train=True, config=config))
    assert batch["image"].shape == (4, 24, 24, 3) and batch["labels"].shape == (4, classes)


def test_voc_difficult_option_changes_targets(tmp_path):
  """With and without difficult objects differ somewhere on the mock data (so the option is live)."""
  _write_metadata("voc/2007", str(tmp_path))
  b = tfds.builder("voc/2007", data_dir=str(tmp_path))
  with_d = _expected(b, "test", "labels")
  without = _expected(b, "test", "labels_no_difficult")
  assert (with_d >= without).all() and (with_d != without).any()


def test_unknown_dataset_lists_known():
  config = default_config()
  config.dataset = "imagenette"
  from mlc_jax.errors import UserError
  with pytest.raises(UserError, match="coco/2014.*shapes|shapes.*coco/2014"):
    registry.get(config)
