"""COCO 2014/2017 through TFDS: labels = the set of object categories in an image (80 classes).

The proposal's protocol: train on COCO train with a validation part carved out deterministically
(data.val_fraction); test on COCO val (40,504 images for 2014, 5,000 for 2017).

Images without any annotated object: the literature (ML-GCN's code and those after it) drops
them, leaving 82,081 train / 40,137 val images of COCO 2014. Under eval.protocol='literature' the
val and test ones get an unknown (-1) target, which every metric leaves out; under 'all' an
all-zero one (each adds k false positives to exactly-top-k precision). In train they are left out
(-1) unless data.keep_unlabeled=True.
"""
from mlc_jax.data.source import EVAL_SPLITS, Source, carve, prepare, tfds_builder

# COCO 2014 images with an annotation, as the literature counts them (train2014 / val2014)
LITERATURE_COUNTS_2014 = {"train": 82_081, "test": 40_137}

HINT = ("Prepare it once with TFDS (see BUILD.md: `tfds build coco/2014 --data_dir=DIR`, or put the "
        "official zip files in DIR/downloads/manual) and set data.data_dir=DIR.")


def source(config):
  """Source for coco/2014 or coco/2017 (train/val carved from train, test = validation)."""
  b = prepare(tfds_builder(config, HINT), name=config.dataset, hint=HINT)
  splits = carve(b, "train", config.data.val_fraction, name=config.dataset)
  splits["test"] = "validation"
  labels = b.info.features["objects"]["label"].names
  protocol, keep = config.eval.protocol, bool(config.data.keep_unlabeled)
  dropped = (() if keep else ("train",)) + (EVAL_SPLITS if protocol == "literature" else ())
  kept = "kept" if keep else "dropped"
  return Source(config.dataset, b, splits, lambda ex: ex["objects"]["label"], labels,
                unlabeled_unknown=dropped,
                options={"val_fraction": config.data.val_fraction, "protocol": protocol,
                         "keep_unlabeled": keep},
                protocol={"split": f"train{config.dataset[5:]} less a validation tail / "
                          f"val{config.dataset[5:]} as test", "difficult": "n/a",
                          "unlabeled_images": "dropped" if protocol == "literature" else "kept",
                          "unlabeled_images_train": kept},
                notes={"literature_counts": LITERATURE_COUNTS_2014}
                if config.dataset == "coco/2014" else None)
