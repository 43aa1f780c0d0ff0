"""Per-image predictions files (from any tagging service) -> a score matrix over a dataset's labels.

A predictions file is CSV with a header `filename,label,score` (one row per image and tag; a row
with an empty label lists an image without tags) or JSON lines, each
`{"filename": ..., "scores": {tag: score, ...}}` or `{"filename": ..., "label": ..., "score": ...}`.
Free-text tags become labels through a synonyms file (resources/tag_synonyms.json by default);
a label's score is the highest score of the tags that name it. Images are matched by their file
name in the dataset (or its base name when that is unique).
"""
import csv
import importlib.resources
import json
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mlc_jax.errors import UserError

UNKNOWN_TAGS = ("error", "ignore")


def _few(items, n=5):
  items = sorted(items)
  return ", ".join(repr(i) for i in items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def read_synonyms(path=""):
  """({label: [tags]}, {ignored tags}) from a synonyms JSON file; '' = the packaged one."""
  try:
    if path:
      doc = json.loads(pathlib.Path(path).read_text())
    else:
      doc = json.loads(importlib.resources.files("mlc_jax").joinpath(
          "resources/tag_synonyms.json").read_text())
  except FileNotFoundError:
    raise UserError(f"synonyms file {path} not found; set eval.synonyms to an existing JSON file "
                    "or '' for the packaged one") from None
  except json.JSONDecodeError as e:
    raise UserError(f"synonyms file {path} is not valid JSON ({e})") from None
  if not isinstance(doc.get("synonyms"), dict):
    raise UserError(f"synonyms file {path or 'tag_synonyms.json'} needs a 'synonyms' object "
                    "{label: [tags]}")
  return doc["synonyms"], {t.strip().lower() for t in doc.get("ignore", [])}


def _norm(tag):
  return " ".join(str(tag).strip().lower().split())


def tag_index(labels, synonyms, ignored=()):
  """{normalised tag: [label indices]} (ignored tags map to []): labels match themselves too."""
  index = {_norm(t): [] for t in ignored}
  for i, label in enumerate(labels):
    tags = {_norm(label), _norm(label).replace(" ", "")}
    tags.update(_norm(t) for t in synonyms.get(label, []))
    for t in tags:
      index.setdefault(t, [])
      if i not in index[t]:
        index[t].append(i)
  return index


def _rows(path):
  """Yields (line number, filename, {tag: score}) from a CSV or JSON-lines predictions file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"predictions file {path} not found; pass --predictions=FILE (CSV or JSON lines)")
  text = path.read_text(encoding="utf-8-sig")
  first = text.lstrip()[:1]
  if path.suffix.lower() in (".jsonl", ".json") or first == "{":
    for n, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        name = row["filename"]
        tags = row["scores"] if "scores" in row else ({row["label"]: row["score"]} if row.get("label")
                                                      else {})
      except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}:{n}: expected a JSON object with 'filename' and 'scores' "
                        "{tag: score} (or 'label' and 'score')") from None
      yield n, name, tags
    return
  reader = csv.DictReader(text.splitlines())
  if not reader.fieldnames or not {"filename", "label", "score"} <= set(reader.fieldnames):
    raise UserError(f"{path}: a CSV predictions file needs the header filename,label,score; "
                    f"found {reader.fieldnames}")
  for n, row in enumerate(reader, 2):
    label = (row["label"] or "").strip()
    yield n, row["filename"], ({label: row["score"]} if label else {})


def read(path, labels, filenames, *, synonyms=None, ignored=(), unknown_tags="error", stats=None):
  """Scores (N, C) float32 for the split's `filenames` (its order) from the predictions file `path`.

  stats (a dict, optional) receives 'unknown_tags': how many distinct tags named no label.

  Raises one UserError for: images the split lacks, split images the file lacks, tags that name
  no label (unless unknown_tags='ignore'), scores outside [0, 1].
  """
  if unknown_tags not in UNKNOWN_TAGS:
    raise UserError(f"eval.unknown_tags={unknown_tags!r} is not one of {UNKNOWN_TAGS}")
  index = tag_index(labels, synonyms or {}, ignored)
  exact = {name: i for i, name in enumerate(filenames)}
  bases = {}
  for i, name in enumerate(filenames):
    bases.setdefault(os.path.basename(name), []).append(i)
  scores = np.zeros((len(filenames), len(labels)), np.float32)
  seen = np.zeros(len(filenames), bool)
  unknown_images, unknown, bad = set(), {}, []
  for n, name, tags in _rows(path):
    name = str(name).strip()
    row = exact.get(name)
    if row is None:
      candidates = bases.get(os.path.basename(name), [])
      row = candidates[0] if len(candidates) == 1 else None
    if row is None:
      unknown_images.add(name)
      continue
    seen[row] = True
    for tag, value in tags.items():
      try:
        value = float(value)
      except (TypeError, ValueError):
        value = float("nan")
      if not 0.0 <= value <= 1.0:
        bad.append(f"line {n}: {tag!r} -> {value}")
        continue
      columns = index.get(_norm(tag))
      if columns is None:
        unknown[_norm(tag)] = unknown.get(_norm(tag), 0) + 1
        continue
      for c in columns:
        scores[row, c] = max(scores[row, c], value)
  if unknown_images:
    raise UserError(f"predictions file {path} names {len(unknown_images)} images that are not in "
                    f"the split: {_few(unknown_images)}; predict on the same split (file names as "
                    "in the dataset) or pass the matching --split")
  if bad:
    raise UserError(f"predictions file {path}: scores must be probabilities in [0, 1]; "
                    f"{len(bad)} are not ({'; '.join(bad[:3])})")
  if unknown and unknown_tags == "error":
    raise UserError(f"predictions file {path} has {len(unknown)} tags that name no label: "
                    f"{_few(unknown)}; add them to the synonyms file (eval.synonyms, 'synonyms' or "
                    "'ignore') or set eval.unknown_tags='ignore'")
  if stats is not None:
    stats["unknown_tags"] = len(unknown)
  if not seen.all():
    missing = [filenames[i] for i in np.flatnonzero(~seen)]
    raise UserError(f"predictions file {path} lacks {len(missing)} of the split's {len(filenames)} "
                    f"images: {_few(missing)}; list every image (an image without tags gets a row "
                    "with an empty label)")
  return scores


def split_examples(source, split):
  """(file names, int8 targets (N, C), -1 unknown) of a split, in the pipeline's stored order."""
  features = source.builder.info.features
  if "image/filename" not in features:
    raise UserError(f"dataset {source.name} stores no image file names, so a predictions file "
                    "cannot be matched to its images")
  ds = source.builder.as_dataset(split=source.splits[split], shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
  def convert(example):
    return {"name": example["image/filename"], "labels": source.targets(example, split)}

  names, rows = [], []
  for ex in ds.map(convert).as_numpy_iterator():
    names.append(ex["name"].decode("utf-8"))
    rows.append(ex["labels"])
  return names, (np.stack(rows) if rows else np.zeros((0, len(source.labels)), np.int8))
