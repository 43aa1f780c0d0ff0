"""COCO 2014/2017 through TFDS: labels = the set of object categories in an image (80 classes).

The proposal's protocol: train on COCO train with a validation part carved out deterministically
(data.val_fraction); test on COCO val (40,504 images for 2014, 5,000 for 2017). Images without
any object keep an all-zero target.
"""
import tensorflow_datasets as tfds

from mlc_jax.data.source import Source, carve, prepare
from mlc_jax.errors import UserError

HINT = ("Prepare it once with TFDS (see BUILD.md: `tfds build coco/2014 --data_dir=DIR`, or put the "
        "official zip files in DIR/downloads/manual) and set data.data_dir=DIR.")


def builder(config):
  """tfds.builder(config.dataset, data_dir=config.data.data_dir)."""
  try:
    return tfds.builder(config.dataset, data_dir=config.data.data_dir or None)
  except Exception as e:  # TFDS raises several types for an unknown or unreadable builder
    raise UserError(f"TFDS dataset {config.dataset} cannot be opened: {e}. {HINT}") from None


def source(config):
  """Source for coco/2014 or coco/2017 (train/val carved from train, test = validation)."""
  b = prepare(builder(config), name=config.dataset, hint=HINT)
  splits = carve(b, "train", config.data.val_fraction, name=config.dataset)
  splits["test"] = "validation"
  labels = b.info.features["objects"]["label"].names
  return Source(config.dataset, b, splits, lambda ex: ex["objects"]["label"], labels,
                options={"val_fraction": config.data.val_fraction})
