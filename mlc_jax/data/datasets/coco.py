"""COCO 2014/2017 through TFDS: labels = the set of object categories in an image (80 classes).

The proposal's protocol: train on COCO train with a validation part carved out deterministically
(data.val_fraction); test on COCO val (40,504 images for 2014, 5,000 for 2017). Images without
any object keep an all-zero target.
"""
from mlc_jax.data.source import Source, carve, prepare, tfds_builder

HINT = ("Prepare it once with TFDS (see BUILD.md: `tfds build coco/2014 --data_dir=DIR`, or put the "
        "official zip files in DIR/downloads/manual) and set data.data_dir=DIR.")


def source(config):
  """Source for coco/2014 or coco/2017 (train/val carved from train, test = validation)."""
  b = prepare(tfds_builder(config, HINT), name=config.dataset, hint=HINT)
  splits = carve(b, "train", config.data.val_fraction, name=config.dataset)
  splits["test"] = "validation"
  labels = b.info.features["objects"]["label"].names
  return Source(config.dataset, b, splits, lambda ex: ex["objects"]["label"], labels,
                options={"val_fraction": config.data.val_fraction})
