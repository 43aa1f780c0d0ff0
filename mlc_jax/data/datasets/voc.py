"""PASCAL VOC 2007/2012 through TFDS: 20 classes, with or without objects marked difficult.

voc/2007: train on trainval less a validation tail carved from `validation`
(data.val_fraction of trainval), test on VOC 2007 test. voc/2012 has no public test labels: its
official validation split is the test set and the validation part is carved from train.

Objects marked difficult: a class present only through difficult objects is "difficult-only". At
evaluation (val, test) the VOC protocol, which every paper in our table follows, ignores them:
under eval.protocol='literature' such an entry is unknown (-1), neither positive nor negative;
under 'all' it is a positive (every annotated object counts). In training data.difficult says:
'ignore' (-1: no loss), 'positive' or 'negative'.
"""
import tensorflow as tf

from mlc_jax.data.source import EVAL_SPLITS, Source, carve, multi_hot, prepare, tfds_builder
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
  labels = b.info.features["labels"].feature.names
  protocol, difficult = config.eval.protocol, config.data.difficult
  rule = {"train": difficult, **{s: "ignore" if protocol == "literature" else "positive"
                                 for s in EVAL_SPLITS}}
  return Source(config.dataset, b, splits, lambda ex: ex["labels_no_difficult"], labels,
                target_fn=lambda ex, split: targets(ex, len(labels), rule[split]),
                options={"val_fraction": config.data.val_fraction, "difficult": difficult,
                         "protocol": protocol},
                protocol={"split": "trainval less a validation tail / test" if config.dataset ==
                          "voc/2007" else "train less a validation tail / val as test",
                          "difficult": ("unknown (-1) at evaluation" if protocol == "literature"
                                        else "positive"),
                          "difficult_train": difficult, "unlabeled_images": "n/a"})


def targets(example, num_classes, difficult):
  """int8 (C,) target of a VOC example: difficult-only classes -> -1 ('ignore'), 1 ('positive')
  or 0 ('negative'); the other classes present 1, absent 0."""
  present = multi_hot(example["labels_no_difficult"], num_classes)
  any_object = multi_hot(example["labels"], num_classes)
  difficult_only = (any_object > 0) & (present == 0)
  value = {"ignore": -1.0, "positive": 1.0, "negative": 0.0}[difficult]
  return tf.cast(tf.where(difficult_only, value, present), tf.int8)
