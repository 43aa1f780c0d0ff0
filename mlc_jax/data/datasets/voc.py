"""PASCAL VOC 2007/2012 through TFDS: 20 classes, with or without objects marked difficult.

voc/2007: train on trainval less a validation tail carved from `validation`
(data.val_fraction of trainval), test on VOC 2007 test. voc/2012 has no public test labels: its
official validation split is the test set and the validation part is carved from train.
data.include_difficult picks TFDS's `labels` (True) or `labels_no_difficult` (False).
"""
from mlc_jax.data.source import Source, carve, prepare, tfds_builder
from mlc_jax.errors import UserError

HINT = ("Prepare it once with TFDS (see BUILD.md: `tfds build voc/2007 --data_dir=DIR`) and set "
        "data.data_dir=DIR.")


def _splits_2007(b, val_fraction):
  """train = train + validation head, val = validation tail (val_fraction of trainval), test."""
  if not 0.0 < val_fraction < 1.0:
    raise UserError(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive) for voc/2007")
  n_train = b.info.splits["train"].num_examples
  n_val = b.info.splits["validation"].num_examples
  k = min(n_val, max(1, int(round((n_train + n_val) * val_fraction))))
  return {"train": f"train+validation[:{n_val - k}]" if k < n_val else "train",
          "val": f"validation[{n_val - k}:]", "test": "test"}


def source(config):
  """Source for voc/2007 or voc/2012."""
  b = prepare(tfds_builder(config, HINT), name=config.dataset, hint=HINT)
  if config.dataset == "voc/2007":
    splits = _splits_2007(b, config.data.val_fraction)
  else:
    splits = carve(b, "train", config.data.val_fraction, name=config.dataset)
    splits["test"] = "validation"
  key = "labels" if config.data.include_difficult else "labels_no_difficult"
  labels = b.info.features["labels"].feature.names
  return Source(config.dataset, b, splits, lambda ex: ex[key], labels,
                options={"val_fraction": config.data.val_fraction,
                         "include_difficult": bool(config.data.include_difficult)})
