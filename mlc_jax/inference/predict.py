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

from mlc_jax.data import pixels
from mlc_jax.data import reader
from mlc_jax import checkpoints, config as config_lib, restore, workdir as workdir_lib
from mlc_jax.errors import UserError
from mlc_jax.inference import classifier as classifier_lib

IMAGE_SUFFIXES = reader.IMAGE_SUFFIXES  # the one list
CHUNK = 256  # images predicted at a time by predict_cli (each decoded and resized on its own)
# Why a file under --images was not predicted: the kinds the summary line counts, in its order.
UNSUPPORTED, BROKEN_LINK, DIRECTORY, SPECIAL, TOO_LARGE, UNDECODABLE = (
    "unsupported type", "broken symlink", "directory", "not a regular file", "too large",
    "undecodable")
KINDS = (UNSUPPORTED, BROKEN_LINK, DIRECTORY, SPECIAL, TOO_LARGE, UNDECODABLE)


def _suffix(path):
  """The lower-case extension of path, or 'no extension'."""
  return pathlib.Path(path).suffix.lower() or "no extension"


def _not_a_file(path):
  """(kind, reason) of a path that is not a regular file, or None when it is one."""
  if os.path.islink(path) and not os.path.exists(path):
    return BROKEN_LINK, f"broken symlink (points to {os.readlink(path)}, which does not exist)"
  if os.path.isdir(path):
    return DIRECTORY, "a directory named like an image, not an image file"
  if not os.path.isfile(path):
    return SPECIAL, "not a regular file (a device, pipe or socket)"
  return None


def list_images(images):
  """A path, folder, glob (or a list of them) -> (sorted file paths, [(path, kind, reason)]).

  A folder gives its image files (by suffix, recursively) and reports every other entry: a file
  of another type, a broken symlink, a directory named like an image. A glob gives every file it
  matches (a file that is not an image is reported by prediction) and reports the broken
  symlinks and image-named directories it matches. UserError when nothing is left to predict.
  """
  specs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
  found, skipped = [], []

  def take(path, listed_by_suffix):
    problem = _not_a_file(path)
    if problem is None and (not listed_by_suffix or _suffix(path) in IMAGE_SUFFIXES):
      found.append(path)
    elif problem is None:
      skipped.append((path, UNSUPPORTED, f"unsupported type ({_suffix(path)}); images are "
                      + " ".join(IMAGE_SUFFIXES)))
    elif problem[0] != DIRECTORY or _suffix(path) in IMAGE_SUFFIXES:
      skipped.append((path, *problem))  # other directories hold files; those are listed

  for spec in specs:
    spec = os.path.expanduser(str(spec))
    if os.path.isdir(spec):
      for p in sorted(str(p) for p in pathlib.Path(spec).rglob("*")):
        take(p, listed_by_suffix=True)
    elif os.path.isfile(spec):
      found.append(spec)
    elif glob.has_magic(spec):
      for p in sorted(glob.glob(spec, recursive=True)):
        take(p, listed_by_suffix=False)
    elif os.path.islink(spec):
      raise UserError(f"--images={spec} is a broken symlink (it points to {os.readlink(spec)})")
    else:
      raise UserError(f"--images={spec}: no such file or folder")
  if not found:
    left = f" (skipped {len(skipped)}: {summarize(skipped)})" if skipped else ""
    raise UserError(f"--images={images} matches no image files{left}; pass a file, a folder or a "
                    "glob like 'photos/*.jpg'")
  return list(dict.fromkeys(found)), skipped  # the same file named twice is predicted once


def summarize(skipped):
  """'1 unsupported type (.txt), 1 broken symlink, ...' from [(path, kind, reason)], by kind."""
  parts = []
  for kind in KINDS:
    paths = [p for p, k, _ in skipped if k == kind]
    if not paths:
      continue
    text = f"{len(paths)} {kind}"
    if kind == UNSUPPORTED:
      text += f" ({', '.join(dict.fromkeys(_suffix(p) for p in paths))})"
    parts.append(text)
  return ", ".join(parts)


def read_images(paths, image_size, method="plain", *, exif=True,
                max_pixels=reader.DEFAULT_MAX_PIXELS):
  """paths -> (kept paths, uint8 (S, S, 3) arrays, [(path, kind, reason)] of the skipped ones).

  Each image is decoded and resized before the next is read, so memory is bounded by the largest
  image data.max_pixels allows, not by the number of paths; a larger one is never decoded.
  """
  kept, arrays, skipped = [], [], []
  for path in paths:
    try:
      array = reader.read(path, exif=exif, max_pixels=max_pixels)
    except reader.ImageError as e:
      kind = TOO_LARGE if e.kind == reader.TOO_LARGE else (
          UNDECODABLE if _suffix(path) in IMAGE_SUFFIXES else UNSUPPORTED)
      skipped.append((path, kind, str(e)))
      continue
    arrays.append(pixels.resize(array, image_size, method).numpy())
    kept.append(path)
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


def model_note(workdir, classifier, which):
  """'checkpoint STAGE/STEP (which) of WORKDIR', and why when it is not the run's final model: its
  stage has not finished, or a later stage of config.stages has no checkpoint yet (a run going
  on: the answer comes from the head while the finetune stage trains)."""
  root = restore.find_workdir(workdir)[0]
  stage = classifier.checkpoint.split("/")[0]
  note = f"checkpoint {classifier.checkpoint} ({which}) of {root}"
  if not checkpoints.is_done(root, stage):
    return f"{note}; the {stage} stage has not finished: this checkpoint is from within its training"
  stages = workdir_lib.read_config(root).get("stages", ())
  later = [s for s in stages if s in config_lib.TRAINED_STAGES
           and config_lib.STAGES.index(s) > config_lib.STAGES.index(stage)
           and not checkpoints.steps_on_disk(root, s)]
  if later:
    return (f"{note}; the {later[0]} stage has no checkpoint yet: this is the {stage} stage's "
            "model")
  return note


def predict_cli(workdir, images, top_k=3, output=None, which="best", stage=None):
  """--mode=predict: prints each image's top-k labels; --output writes every label's score.

  Every file left out is reported on stderr with its reason (unsupported type, broken symlink,
  directory named like an image, too large for data.max_pixels, undecodable) and counted by kind in the summary line; the rest
  are predicted. Returns {'filenames': [...], 'scores': float32 (N, C), 'labels': [...],
  'skipped': [(path, reason)]}.
  """
  paths, listed = list_images(images)
  if output is not None and pathlib.Path(output).suffix.lower() not in (".csv", ".jsonl", ".json"):
    raise UserError(f"--output={output}: use a .csv or .jsonl file name")  # before the slow part
  if top_k < 1:
    raise UserError(f"--top_k={top_k} must be at least 1")
  classifier = classifier_lib.load(workdir, which, stage)
  print(f"predicting with {model_note(workdir, classifier, which)}", file=sys.stderr)
  labels = list(classifier.labels)
  k = min(top_k, len(labels))
  for path, _, reason in listed:
    print(f"skipped {path}: {reason}", file=sys.stderr)
  filenames, chunks, skipped = [], [], list(listed)
  for start in range(0, len(paths), CHUNK):
    kept, arrays, bad = read_images(
        paths[start:start + CHUNK], classifier.image_size, classifier.resize,
        exif=classifier.exif_orientation, max_pixels=classifier.max_pixels)
    for path, _, reason in bad:
      print(f"skipped {path}: {reason}", file=sys.stderr)
    skipped += bad  # a file the glob matched under another extension counts as unsupported type
    if not kept:
      continue
    scores = np.asarray(classifier.predict(np.stack(arrays)), dtype=np.float32)
    for name, row in zip(kept, scores):
      order = np.argsort(-row, kind="stable")[:k]
      print(format_top_k(name, [(labels[i], float(row[i])) for i in order]))
    filenames += kept
    chunks.append(scores)
  total = len(paths) + len(listed)
  if not filenames:
    raise UserError(f"none of the {total} files of --images={images} could be read as images "
                    f"({summarize(skipped)})")
  summary = f"predicted {len(filenames)} images"
  if skipped:
    summary += f"; {len(skipped)} of {total} files skipped: {summarize(skipped)}"
  print(summary, file=sys.stderr)
  scores = np.concatenate(chunks)
  if output is not None:
    write_predictions(output, filenames, scores, labels)
    print(f"wrote {len(filenames)} predictions to {output}", file=sys.stderr)
  return {"filenames": filenames, "scores": scores, "labels": labels,
          "skipped": [(p, r) for p, _, r in skipped]}
