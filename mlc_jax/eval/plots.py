"""PNG plots of an evaluation (matplotlib, Agg): per-class AP, PR curves, training curves, an image grid."""
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return pathlib.Path(path)


def ap_bars(per_class, path):
  """Horizontal bars of per-class AP (rows of metrics.per_class_table), best on top."""
  rows = sorted(per_class, key=lambda r: r["AP"])
  fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(rows) + 1)))
  ax.barh([r["name"] for r in rows], [100 * r["AP"] for r in rows], color="tab:blue")
  ax.set_xlabel("average precision (%)")
  ax.set_xlim(0, 100)
  ax.tick_params(axis="y", labelsize=7)
  ax.set_title("AP per class")
  return _save(fig, path)


def precision_recall(scores, labels):
  """(precision, recall) arrays of one class at every distinct score threshold, highest first."""
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], labels[order]
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each run of tied scores
  tp = np.cumsum(y)[last]
  precision = tp / (last + 1)
  recall = tp / max(1.0, y.sum())
  return np.r_[1.0, precision], np.r_[0.0, recall]


def pr_curves(scores, labels, names, ap, path, n=3):
  """Precision-recall curves of the n best and n worst classes by AP (classes with positives)."""
  ranked = [i for i in np.argsort(-np.asarray(ap)) if (labels[:, i] == 1).any()]
  picks = ranked[:n] + [i for i in ranked[-n:] if i not in ranked[:n]]
  fig, ax = plt.subplots(figsize=(6, 5))
  for rank, i in enumerate(picks):
    known = labels[:, i] != -1  # each class's curve over its known images, as its AP
    p, r = precision_recall(scores[known, i], labels[known, i])
    style = "-" if rank < n else "--"
    ax.step(r, p, style, where="pre", label=f"{names[i]} (AP {100 * ap[i]:.1f})")
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7, loc="lower left")
  ax.set_title(f"precision-recall: {n} best (solid) and worst (dashed) classes")
  return _save(fig, path)


def training_curves(history, path):
  """Train/val loss and validation mAP per epoch, stages one after another; None without history."""
  rows = [r for r in history if "epoch" in r and ("train_loss" in r or "val_loss" in r)]
  if not rows:
    return None
  x = np.arange(1, len(rows) + 1)
  fig, (loss_ax, map_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
  for key in ("train_loss", "val_loss"):
    ys = [r.get(key, np.nan) for r in rows]
    loss_ax.plot(x, ys, marker=".", label=key.replace("_", " "))
  ys = [r.get("val_mAP", np.nan) for r in rows]
  map_ax.plot(x, [100 * y for y in ys], marker=".", color="tab:green")
  starts = {}
  for i, r in enumerate(rows):
    starts.setdefault(r.get("stage", ""), i + 1)
  for ax in (loss_ax, map_ax):
    for stage, start in starts.items():
      ax.axvline(start - 0.5, color="grey", lw=0.6)
      ax.text(start - 0.4, 0.98, stage, transform=ax.get_xaxis_transform(), fontsize=7, va="top")
    ax.set_xlabel("epoch (all stages)")
  loss_ax.set_ylabel("loss")
  loss_ax.legend(fontsize=8)
  map_ax.set_ylabel("validation mAP (%)")
  return _save(fig, path)


def image_grid(images, true_names, predicted, path, columns=4):
  """Images with their true labels and predicted (label, probability) lists."""
  n = len(images)
  if n == 0:
    return None
  rows = -(-n // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for i in range(n):
    ax = axes.ravel()[i]
    ax.imshow(images[i])
    hits = set(true_names[i])
    pred = ", ".join(f"{name} {p:.2f}" + ("" if name in hits else "*") for name, p in predicted[i])
    ax.set_title(f"true: {', '.join(true_names[i]) or '-'}\npred: {pred or '-'}", fontsize=7)
  fig.suptitle("predicted labels (* = not a true label)", fontsize=9)
  return _save(fig, path)
