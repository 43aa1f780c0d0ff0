"""The protocol of an evaluation: how its targets were made and how it was scored, with the counts.

Recorded in metrics.json (meta['protocol']) beside every number, stated in the report's first
lines, and compared field by field with each published row (mlc_jax.eval.literature), so a
number never stands beside a paper's made under another protocol without saying how it differs.
"""
import numpy as np
from absl import logging

AP = "non-interpolated (sklearn average_precision_score)"
CF1 = "harmonic mean of CP and CR"
NAMES = {"literature": "the literature's (VOC difficult-only labels unknown; COCO and NUS-WIDE "
                       "images without labels left out)",
         "all": "every stored image and label"}


# how the papers write each model.arch (the literature's rows say "VGG16", "ResNet-101")
DISPLAY_NAMES = {"resnet50": "ResNet-50", "resnet101": "ResNet-101",
                 "efficientnet_lite0": "EfficientNet-Lite0"}


def arch_name(arch):
  """'VGG16', 'ResNet-101', 'EfficientNet-Lite0': model.arch as the literature writes it."""
  return DISPLAY_NAMES.get(arch, arch.upper())


def backbone(config):
  """'VGG16', 'VGG16-BN', 'ResNet-101', with the width multiplier when it is not 1."""
  name = arch_name(config.model.arch) + ("-BN" if config.model.batch_norm else "")
  width = float(config.model.width)
  return name if width == 1 else f"{name} (width x{width:g})"


def record(config, source, split, labels):
  """The protocol dict of an evaluation of `split` with these (N, C) targets (1/0/-1).

  images: the stored train and val counts and, for the evaluated split, the images the metrics
  count (those with a known label); images_left_out: the evaluated split's images whose target
  is entirely unknown (the protocol drops them).
  """
  labels = np.asarray(labels)
  counted = int((labels != -1).any(axis=1).sum()) if labels.size else 0
  images = {s: int(n) for s, n in source.num_examples.items()}
  images[split] = counted
  out = {"name": config.eval.protocol, "dataset": source.name, "evaluated_split": split,
         **source.protocol, "images": images,
         "images_stored": int(source.num_examples.get(split, len(labels))),
         "images_left_out": int(len(labels) - counted),
         "unknown_entries": int((labels == -1).sum()),
         "topk": "min_score" if config.eval.topk_min_score else "exact",
         "image_size": int(config.image_size), "backbone": backbone(config),
         "cf1_definition": CF1, "ap": AP}
  _check_counts(source, split, out)
  return out


def _check_counts(source, split, protocol):
  """A warning when a full COCO 2014 test set does not hold the literature's image count."""
  expected = source.notes.get("literature_counts", {}).get(split)
  stored = protocol["images_stored"]
  if expected is None or protocol["name"] != "literature" or stored < 40_000:
    return  # only the full set has a known count (tests and subsets are smaller)
  counted = protocol["images"][split]
  if counted != expected:
    logging.warning("%s %s: %d images have annotations, the literature counts %d; numbers "
                    "beside published ones are not on the same images", source.name, split,
                    counted, expected)
    protocol["count_warning"] = f"{counted:,} images with annotations, the literature {expected:,}"


def lines(protocol):
  """The report's first lines about the protocol (markdown), or a note that none was recorded."""
  if not protocol:
    return ["Protocol: not recorded (a result from before protocols were recorded).\n"]
  split, images = protocol["evaluated_split"], protocol["images"]
  counts = ", ".join(f"{s} {n:,}" for s, n in images.items() if s != split) + " stored"
  out = [f"Protocol: {protocol['name']}, {NAMES.get(protocol['name'], protocol['name'])}. "
         f"Split: {protocol.get('split', 'n/a')}. {split}: {images[split]:,} images counted of "
         f"{protocol['images_stored']:,} stored ({protocol['images_left_out']:,} with no known "
         f"label left out; {protocol['unknown_entries']:,} unknown label entries); {counts}."]
  details = [f"difficult objects: {protocol['difficult']}" if protocol.get("difficult", "n/a") != "n/a"
             else "", f"images without labels: {protocol['unlabeled_images']}"
             if protocol.get("unlabeled_images", "n/a") != "n/a" else "",
             f"AP {protocol['ap']}", f"CF1 = {protocol['cf1_definition']}",
             f"{protocol['image_size']} px, {protocol['backbone']}"
             if protocol.get("image_size", "n/a") != "n/a" else protocol.get("backbone", "")]
  out.append("; ".join(d for d in details if d) + ".")
  if protocol.get("count_warning"):
    out.append(f"**Warning:** {protocol['count_warning']}.")
  return [" ".join(out) + "\n"]
