"""--mode=predict: a trained run's labels for image files, printed and optionally written.

Prediction files, CSV or JSON lines, are the format `--mode=evaluate --predictions=FILE` reads:
  CSV          filename,label,score            one row per (image, label), every label
  JSON lines   {"filename": "a.jpg", "scores": {"cat": 0.91, "dog": 0.02}}
"""
import csv
import glob
import json
import os
import pathlib
import sys

import numpy as np

from mlc_jax.data import images as image_io
from mlc_jax.errors import UserError
from mlc_jax.inference import restore

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
CHUNK = 256  # images decoded and predicted at a time by predict_cli (bounds host memory)


def gather_images(images):
  """A path, folder, glob (or a list of them) -> sorted list of file paths (UserError if none).

  A folder gives its image files (by suffix, recursively); a glob gives every file it matches,
  so a file that is not an image is reported by prediction rather than silently left out.
  """
  specs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
  found = []
  for spec in specs:
    spec = os.path.expanduser(str(spec))
    if os.path.isdir(spec):
      found += sorted(str(p) for p in pathlib.Path(spec).rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif os.path.isfile(spec):
      found.append(spec)
    elif glob.has_magic(spec):
      found += sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    else:
      raise UserError(f"--images={spec}: no such file or folder")
  if not found:
    raise UserError(f"--images={images} matches no image files; pass a file, a folder or a glob "
                    "like 'photos/*.jpg'")
  return list(dict.fromkeys(found))  # the same file named twice is predicted once


def read_images(paths):
  """Decodes paths -> (kept paths, uint8 arrays, [(path, reason)] of the unreadable ones)."""
  kept, arrays, skipped = [], [], []
  for path in paths:
    try:
      arrays.append(image_io.to_array(path))
      kept.append(path)
    except UserError as e:
      skipped.append((path, str(e)))
  return kept, arrays, skipped


def write_predictions(path, filenames, scores, labels):
  """Writes scores (N, C) as CSV (filename,label,score) or JSON lines, by path's suffix."""
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix not in (".csv", ".jsonl", ".json"):
    raise UserError(f"--output={path}: use a .csv or .jsonl file name")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    if suffix == ".csv":
      writer = csv.writer(f)
      writer.writerow(["filename", "label", "score"])
      for name, row in zip(filenames, scores):
        writer.writerows((name, label, f"{s:.6g}") for label, s in zip(labels, row))
    else:
      for name, row in zip(filenames, scores):
        record = {"filename": name, "scores": {l: round(float(s), 6) for l, s in zip(labels, row)}}
        f.write(json.dumps(record) + "\n")
  os.replace(tmp, path)  # a reader never sees half a file


def format_top_k(filename, top):
  """One printed line: `FILENAME  label 0.912  label 0.301 ...`."""
  return filename + "  " + "  ".join(f"{label} {p:.3f}" for label, p in top)


def predict_cli(workdir, images, top_k=3, output=None, which="best", stage=None):
  """--mode=predict: prints each image's top-k labels; --output writes every label's score.

  Unreadable images are reported on stderr and skipped; the rest are predicted. Returns
  {'filenames': [...], 'scores': float32 (N, C), 'labels': [...], 'skipped': [(path, reason)]}.
  """
  paths = gather_images(images)
  if output is not None and pathlib.Path(output).suffix.lower() not in (".csv", ".jsonl", ".json"):
    raise UserError(f"--output={output}: use a .csv or .jsonl file name")  # before the slow part
  if top_k < 1:
    raise UserError(f"--top_k={top_k} must be at least 1")
  classifier = restore.load(workdir, which, stage)
  labels = list(classifier.labels)
  k = min(top_k, len(labels))
  filenames, chunks, skipped = [], [], []
  for start in range(0, len(paths), CHUNK):
    kept, arrays, bad = read_images(paths[start:start + CHUNK])
    for path, reason in bad:
      print(f"skipped {path}: {reason}", file=sys.stderr)
    skipped += bad
    if not kept:
      continue
    scores = np.asarray(classifier.predict(arrays), dtype=np.float32)
    for name, row in zip(kept, scores):
      order = np.argsort(-row, kind="stable")[:k]
      print(format_top_k(name, [(labels[i], float(row[i])) for i in order]))
    filenames += kept
    chunks.append(scores)
  if not filenames:
    raise UserError(f"none of the {len(paths)} files of --images={images} could be read as images")
  if skipped:
    print(f"{len(skipped)} of {len(paths)} files skipped (unreadable)", file=sys.stderr)
  scores = np.concatenate(chunks)
  if output is not None:
    write_predictions(output, filenames, scores, labels)
    print(f"wrote {len(filenames)} predictions to {output}", file=sys.stderr)
  return {"filenames": filenames, "scores": scores, "labels": labels, "skipped": skipped}
