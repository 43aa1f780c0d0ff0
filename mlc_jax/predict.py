"""Restore a trained run for prediction: `mlc_jax.load` and `--mode=predict`.

A run is restored from its workdir alone (config.json, labels.txt, the Orbax checkpoint and, when
evaluation tuned them, thresholds.json): no config file, no dataset, no training code.
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

from mlc_jax.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
CHUNK = 256  # images decoded and predicted at a time by predict_cli (bounds host memory)


def find_workdir(path):
  """A workdir, or a checkpoint folder inside one -> (workdir, stage or None, step or None)."""
  path = pathlib.Path(path).expanduser().resolve()
  if not path.exists():
    raise UserError(f"{path} does not exist; pass a training workdir "
                    "(the --workdir of --mode=train)")
  for parent in (path, *path.parents):
    if (parent / "config.json").exists():
      break
  else:
    raise UserError(f"{path} is not inside a training workdir (no config.json in it or above it); "
                    "pass the --workdir of --mode=train")
  rel = path.relative_to(parent).parts
  if not rel:
    return parent, None, None
  if rel[0] != "checkpoints" or len(rel) > 3:
    raise UserError(f"{path} is not a checkpoint folder of {parent}; pass the workdir itself or "
                    f"{parent / 'checkpoints' / 'STAGE'}[/STEP]")
  stage = rel[1] if len(rel) > 1 else None
  step = None
  if len(rel) == 3:
    if not rel[2].isdigit():
      raise UserError(f"{path} is not a checkpoint step folder (its name must be the step number)")
    step = int(rel[2])
  return parent, stage, step


def read_thresholds(workdir, labels):
  """WORKDIR/thresholds.json -> float32 (C,) per-class thresholds, or None when there is none.

  Accepts {"labels": [...], "thresholds": [...]} (what evaluation writes), {label: t} or [t, ...];
  labels it omits keep 0.5.
  """
  path = pathlib.Path(workdir) / "thresholds.json"
  if not path.exists():
    return None
  try:
    data = json.loads(path.read_text())
  except ValueError as e:
    raise UserError(f"{path} is not valid JSON ({e}); delete it or rerun --mode=evaluate") from None
  if isinstance(data, dict) and "thresholds" in data:  # evaluate.write_thresholds: labels + list
    if isinstance(data.get("labels"), list) and len(data["labels"]) == len(data["thresholds"]):
      data = dict(zip(data["labels"], data["thresholds"]))
    else:
      data = data["thresholds"]
  if isinstance(data, dict):
    values = [data.get(label, 0.5) for label in labels]
  elif isinstance(data, list) and len(data) == len(labels):
    values = data
  else:
    raise UserError(f"{path} must map each of the {len(labels)} labels to a threshold; "
                    "delete it or rerun --mode=evaluate")
  return np.asarray(values, dtype=np.float32)


def restore(path, which="best"):
  """A workdir or a checkpoint folder in it -> (workdir, config, labels, nnx model)."""
  if which not in ("best", "latest"):
    raise UserError(f"which={which!r} must be 'best' or 'latest'")
  workdir, stage, step = find_workdir(path)
  return (workdir, *_restore(workdir, stage, step, which))


def _restore(workdir, stage, step, which):
  """(config, labels, model) from a stage's (or, stage None, the final stage's) checkpoint."""
  import jax
  from flax import nnx

  from mlc_jax import checkpoints, models
  config = checkpoints.read_config(workdir)
  labels = checkpoints.read_labels(workdir)
  if stage:
    directory = checkpoints.stage_dir(workdir, stage)
  else:
    directory = checkpoints.final_stage_dir(workdir)
  best = config.get("checkpoint", {}).get("best_metric", "val_loss")
  mngr = checkpoints.Manager(workdir, directory.name, best, read_only=True)
  try:
    if step is None:
      step = mngr.step_for(which)
    if step is None or not (directory / str(step)).is_dir():
      where = directory if step is None else directory / str(step)
      raise UserError(f"no complete checkpoint in {where}; train with --mode=train or pass "
                      "another checkpoint folder")
    # Shapes only: random initialisation of a full VGG16 would cost seconds and be overwritten.
    build = lambda: models.build_model(config, len(labels), rngs=nnx.Rngs(0))
    model = nnx.eval_shape(build)
    # Every array onto this machine's default device, whatever devices the run was trained on.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          checkpoints.model_state(model))
    restored = mngr.restore(step, abstract_model=target)
  finally:
    mngr.close()
  if jax.tree.leaves(nnx.state(model, nnx.Not(checkpoints.SAVED))):
    model = build()  # state the checkpoint does not keep (RNG streams) needs real values
  checkpoints.load_model_state(model, restored["model"])
  return config, labels, model


def load(path, which="best"):
  """Restores a trained run -> Classifier.

  path: a workdir, or a checkpoint folder inside it (WORKDIR/checkpoints/STAGE[/STEP]).
  which: 'best' (by the run's checkpoint.best_metric) or 'latest'; ignored when path names a step.
  Parameters land on this machine's default device, whatever the run was trained on.
  """
  from mlc_jax.classifier import Classifier
  workdir, config, labels, model = restore(path, which)
  return Classifier(model, labels, image_size=config.image_size, resize=config.data.resize,
                    activation=config.head.activation,
                    thresholds=read_thresholds(workdir, labels))


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
  from mlc_jax.data import images as image_io
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


def predict_cli(workdir, images, top_k=3, output=None, which="best"):
  """--mode=predict: prints each image's top-k labels; --output writes every label's score.

  Unreadable images are reported on stderr and skipped; the rest are predicted. Returns
  {'filenames': [...], 'scores': float32 (N, C), 'labels': [...], 'skipped': [(path, reason)]}.
  """
  paths = gather_images(images)
  if output is not None and pathlib.Path(output).suffix.lower() not in (".csv", ".jsonl", ".json"):
    raise UserError(f"--output={output}: use a .csv or .jsonl file name")  # before the slow part
  if top_k < 1:
    raise UserError(f"--top_k={top_k} must be at least 1")
  classifier = load(workdir, which)
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
