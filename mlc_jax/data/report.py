"""`--mode=data_report`: what a dataset holds, before any training.

Writes workdir/data_report.json (images per split, label frequencies, labels per image: mean and
histogram, skipped files with reasons, dataset notes such as NUS-WIDE's missing images) and
workdir/data_contact_sheet.png (augmented training images with their labels), and prints a summary.
"""
import json
import os

import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mlc_jax.data import augment, pipeline, registry  # noqa: E402
from mlc_jax.data.source import SPLITS


def split_stats(labels, names):
  """Statistics of one split's (N, C) targets (1 present, 0 absent, -1 unknown)."""
  present, unknown = labels == 1, labels == -1
  per_image = present.sum(axis=1).astype(int)
  counts = present.sum(axis=0).astype(int)
  return {
      "images": int(labels.shape[0]),
      "images_without_known_labels": int(unknown.all(axis=1).sum()) if labels.shape[1] else 0,
      "unknown_entries": {n: int(c) for n, c in zip(names, unknown.sum(axis=0))},
      "label_frequency": {n: int(c) for n, c in zip(names, counts)},
      "labels_per_image_mean": float(per_image.mean()) if len(per_image) else 0.0,
      "labels_per_image_histogram": {str(k): int(v) for k, v in
                                     enumerate(np.bincount(per_image)) if v} if len(per_image) else {},
  }


def contact_sheet(config, source, path, count=16):
  """Save a grid of augmented training images, each titled with its labels."""
  n = min(count, source.num_examples["train"])
  batch = next(pipeline.batches(source, "train", batch_size=n, train=True, config=config,
                                seed=config.seed))
  images = np.asarray(augment.make_augment(config.augment)(batch["image"], jax.random.key(config.seed)))
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8))
      names = [source.labels[j] for j in np.flatnonzero(batch["labels"][i] == 1)]
      ax.set_title("\n".join([", ".join(names[k:k + 2]) for k in range(0, len(names), 2)]) or "(none)",
                   fontsize=7)
  fig.suptitle(f"{source.name}: augmented training images", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def data_report(config, workdir):
  """Print and write workdir/data_report.json and workdir/data_contact_sheet.png; return the report."""
  os.makedirs(workdir, exist_ok=True)
  source = registry.get(config)
  report = {"dataset": source.name, "labels": source.labels, "num_classes": len(source.labels),
            "fingerprint": source.fingerprint(), "splits": {},
            "skipped_files": source.skipped, "skipped_count": len(source.skipped), "notes": source.notes}
  for split in SPLITS:
    report["splits"][split] = split_stats(source.label_matrix(split), source.labels)
  with open(os.path.join(workdir, "data_report.json"), "w") as f:
    json.dump(report, f, indent=2)
  sheet = os.path.join(workdir, "data_contact_sheet.png")
  contact_sheet(config, source, sheet)
  report["contact_sheet"] = sheet
  print(format_report(report))
  return report


def format_report(report):
  """A short plain-text summary of a report dict."""
  lines = [f"dataset {report['dataset']}: {report['num_classes']} labels"]
  for split, s in report["splits"].items():
    hist = ", ".join(f"{k}:{v}" for k, v in s["labels_per_image_histogram"].items())
    lines.append(f"  {split:5s} {s['images']:8d} images, {s['labels_per_image_mean']:.2f} labels/image "
                 f"(histogram {hist})")
  train = report["splits"]["train"]["label_frequency"]
  top = sorted(train.items(), key=lambda kv: -kv[1])
  lines.append("  train label frequency: " + ", ".join(f"{k} {v}" for k, v in top[:10])
               + (" ..." if len(top) > 10 else ""))
  for key, value in report["notes"].items():
    if key == "annotates":  # a mixture: which part annotates which label (the rest: unknown)
      lines += [f"  {part} annotates {len(names)}: {', '.join(names)}"
                for part, names in value.items()]
    else:
      lines.append(f"  {key}: {value}")
  lines.append(f"  skipped files: {report['skipped_count']}")
  for item in report["skipped_files"][:20]:
    lines.append(f"    {item['path']}: {item['reason']}")
  if report.get("contact_sheet"):
    lines.append(f"  contact sheet: {report['contact_sheet']}")
  return "\n".join(lines)
