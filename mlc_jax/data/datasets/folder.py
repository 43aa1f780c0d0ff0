"""`folder`: the user's own images plus a label file, built once into a TFDS dataset.

Label file (data.csv; default MANUAL_DIR/labels.csv):
  CSV with a header `filename,labels[,split]`; labels joined by data.label_separator (default " "),
  filename relative to data.manual_dir; split (optional) is train, val or test.
  or JSON lines (.jsonl/.json): {"filename": "a.jpg", "labels": ["cat", "dog"], "split": "train"}.
  A label token `cat` marks a present label, `-cat` an explicit negative (absent), `?cat` an
  unknown one (-1: no loss, left out of that class's metrics). Labels a row does not mention are
  negatives, or unknown with data.unlisted='unknown' (a partial annotation). A row without any
  token is an image with no labels: kept with data.keep_unlabeled=True, else left out.
Label names: data.labels_file, else MANUAL_DIR/labels.txt, else every label the file uses (sorted).
Without a split column, test (data.test_fraction) and val (data.val_fraction) are chosen by a
hash of the filename: deterministic and stable when rows are added or reordered.

Why a TFDS dataset and not a tf.data source over the files: the one Source/pipeline serves every
dataset, each image is checked once at build time (bad files are skipped and recorded in the
dataset's metadata, so the pipeline never meets one), and reads are sequential TFRecords that
tfds.even_splits shares out between hosts. The cost is one copy of the images in data_dir.
"""
import csv
import dataclasses
import hashlib
import json
import logging
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from mlc_jax.data import reader
from mlc_jax.data.image_files import SkipLog, labelled_image_features, read_image
from mlc_jax.data.source import SPLITS, Source, multi_hot, prepare
from mlc_jax.errors import UserError

log = logging.getLogger(__name__)


def _rows(path, separator):
  """[(line number, filename, [label, ...], split or None)] from a CSV or JSON-lines file."""
  if not os.path.isfile(path):
    raise UserError(f"folder: label file {path} does not exist; set data.csv (see BUILD.md)")
  rows = []
  with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is no header
    if path.endswith((".jsonl", ".json")):
      for line, text in enumerate(f, 1):
        if not text.strip():
          continue
        try:
          item = json.loads(text)
          labels = item.get("labels", [])
          labels = labels.split(separator) if isinstance(labels, str) else list(labels)
          rows.append((line, str(item["filename"]), labels, item.get("split")))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
          raise UserError(f"{path} line {line}: expected a JSON object with filename and labels ({e})") from None
      return rows
    reader = csv.DictReader(f)
    if not reader.fieldnames or not {"filename", "labels"} <= set(reader.fieldnames):
      raise UserError(f"{path} line 1: the header must name the columns filename,labels[,split]; "
                      f"got {reader.fieldnames}")
    for item in reader:
      labels = (item["labels"] or "").strip()
      rows.append((reader.line_num, (item["filename"] or "").strip(),
                   [x.strip() for x in labels.split(separator) if x.strip()] if labels else [],
                   (item.get("split") or "").strip() or None))
  return rows


def _fraction(filename):
  """A stable number in [0, 1) from the filename."""
  return int(hashlib.sha1(filename.encode()).hexdigest()[:12], 16) / 16 ** 12


def _token(token):
  """('' present | '-' absent | '?' unknown, label name) of one label token."""
  if token[:1] in ("-", "?") and len(token) > 1:
    return token[0], token[1:]
  return "", token


def _same_path(path, placed):
  """UserError naming both lines when two rows name the same file (compared after normpath):
  in two splits it is a test leak, in one split an exact duplicate row."""
  first = {}
  for line, filename, split in placed:
    key = os.path.normpath(filename)
    if key not in first:
      first[key] = (line, filename, split)
      continue
    line0, filename0, split0 = first[key]
    names = repr(filename) if filename == filename0 else f"{filename0!r} and {filename!r}"
    if split != split0:
      raise UserError(f"{path} lines {line0} and {line}: the same image {names} is in {split0} "
                      f"(line {line0}) and in {split} (line {line}), so {_leak(split0, split)}; "
                      "keep one of the two rows")
    raise UserError(f"{path} lines {line0} and {line}: duplicate row, image {names} is listed "
                    f"twice (both in {split}); delete one of the two rows")


def _leak(a, b):
  """What an image in splits a and b spoils."""
  if "test" in (a, b):
    return "the test split would score an image the model trained or was tuned on"
  return "the validation split would score an image the model trained on"


def _digest(filename):
  """sha256 hex of a file's bytes (read once, in chunks); None when it is empty or unreadable
  (the builder skips and lists those)."""
  try:
    if os.path.getsize(filename) == 0:
      return None
    with open(filename, "rb") as f:
      return hashlib.file_digest(f, "sha256").hexdigest()
  except OSError:
    return None


def _digests(root, files, data_dir):
  """{filename: sha256 or None} of the files under root. Each file is read once: the digests are
  kept in DATA_DIR/labelled_folder_digests.json by absolute path, size and mtime, so a relaunch
  on an unchanged folder reads no image here."""
  cache_path = os.path.join(os.path.expanduser(data_dir), "labelled_folder_digests.json")
  try:
    with open(cache_path, encoding="utf-8") as f:
      cache = json.load(f)
  except (OSError, ValueError):
    cache = {}
  out, changed = {}, False
  for name in files:
    full = os.path.abspath(os.path.join(root, name))
    try:
      st = os.stat(full)
      stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
      stamp = None
    entry = cache.get(full)
    if stamp is None or entry is None or entry[:2] != stamp:
      entry = (stamp or [0, 0]) + [_digest(full)]
      cache[full] = entry
      changed = changed or stamp is not None
    out[name] = entry[2]
  if changed:
    try:
      os.makedirs(os.path.dirname(cache_path), exist_ok=True)
      tmp = f"{cache_path}.tmp{os.getpid()}"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(cache, f)
      os.replace(tmp, cache_path)
    except OSError:  # a read-only data_dir: digests are recomputed next time
      pass
  return out


def _same_content(path, placed, has_split):
  """Files with the same bytes under two names, from (line, filename, final split, sha256) of
  each kept row. In two splits: UserError naming both lines (a test leak by content). In one
  split: a warning naming both files; returns those pairs as strings for the data report."""
  groups = {}
  for line, filename, split, digest in sorted(placed):
    if digest is not None:
      groups.setdefault(digest, []).append((line, filename, split))
  leaks, near = [], []
  for group in groups.values():
    line0, filename0, split0 = group[0]
    for line, filename, split in group[1:]:
      pair = (line0, filename0, split0, line, filename, split)
      (leaks if split != split0 else near).append(pair)
  if leaks:
    line0, filename0, split0, line, filename, split = leaks[0]
    more = f" ({len(leaks) - 1} more such pairs)" if len(leaks) > 1 else ""
    raise UserError(f"{path} lines {line0} and {line}: {filename0!r} ({split0}, line {line0}) and "
                    f"{filename!r} ({split}, line {line}) are the same image (identical bytes), so "
                    f"{_leak(split0, split)}{more}; delete one of the two files and its row, or "
                    + ("give both rows the same split" if has_split else
                       "add a split column that gives both rows the same split"))
  out = []
  for line0, filename0, split0, line, filename, _ in near:
    log.warning("%s: %s (line %d) and %s (line %d) are the same image (identical bytes) in %s; "
                "it counts twice there", path, filename0, line0, filename, line, split0)
    out.append(f"{split0}: {filename0} (line {line0}) = {filename} (line {line})")
  return out


def read_manifest(config):
  """(labels, {split: [(filename, present ids, absent ids, unknown ids)]}, near duplicates) after
  checking every row; UserError names file and line.

  Two rows naming one file (after os.path.normpath) or two files with the same bytes stop with
  both lines when they fall in two splits (the test split would measure memorised images), and
  two rows naming one file stop in one split too (a duplicate row). Two names of the same bytes
  in one split are a warning; near duplicates lists them as 'split: a (line i) = b (line j)'.
  """
  d = config.data
  root = d.manual_dir
  if not root or not os.path.isdir(root):
    raise UserError(f"dataset=folder needs data.manual_dir=DIR, the image folder; got {root!r}")
  path = d.csv or os.path.join(root, "labels.csv")
  rows = _rows(path, d.label_separator)
  if not rows:
    raise UserError(f"{path} lists no images")
  labels_file = d.labels_file or os.path.join(root, "labels.txt")
  if d.labels_file and not os.path.isfile(d.labels_file):
    raise UserError(f"data.labels_file={d.labels_file} does not exist")
  if os.path.isfile(labels_file):
    with open(labels_file, encoding="utf-8") as f:
      names = [x.strip() for x in f if x.strip()]
    where = labels_file
  else:
    names = sorted({_token(x)[1] for _, _, labels, _ in rows for x in labels})
    where = None
  index = {n: i for i, n in enumerate(names)}
  has_split = any(split for *_, split in rows)
  splits = {s: [] for s in SPLITS}
  unlabeled = dict.fromkeys(SPLITS, 0)  # rows left out for having no label, by split
  placed = []  # (line, filename, split) of every row, kept or not, for the duplicate checks
  kept = {}  # filename -> line of the rows that go into the dataset
  for line, filename, labels, split in rows:
    if not filename:
      raise UserError(f"{path} line {line}: empty filename")
    ids = {"": set(), "-": set(), "?": set()}
    for token in labels:
      mark, label = _token(token)
      if label not in index:
        raise UserError(f"{path} line {line}: label {label!r} is not in {where}; add it there or fix the row")
      for other, seen in ids.items():
        if other != mark and index[label] in seen:
          raise UserError(f"{path} line {line}: label {label!r} is marked twice ({other or 'present'}"
                          f" and {mark}); give it once: cat (present), -cat (absent) or ?cat (unknown)")
      ids[mark].add(index[label])
    if not os.path.exists(os.path.join(root, filename)):
      raise UserError(f"{path} line {line}: image {os.path.join(root, filename)} does not exist")
    if has_split:
      if split not in SPLITS:
        raise UserError(f"{path} line {line}: split {split!r} must be one of {SPLITS}")
    else:
      u = _fraction(filename)
      split = "test" if u < d.test_fraction else "val" if u < d.test_fraction + d.val_fraction else "train"
    placed.append((line, filename, split))
    if not labels and not d.keep_unlabeled:
      unlabeled[split] += 1
      continue
    kept[filename] = line
    splits[split].append((filename, sorted(ids[""]), sorted(ids["-"]), sorted(ids["?"])))
  _same_path(path, placed)
  digests = _digests(root, kept, d.data_dir or tfds.core.constants.DATA_DIR)
  if has_split and not splits["val"]:  # carve val from train by the same stable hash
    first = {}  # identical files follow the first of them, so the carve splits no such pair
    for f in sorted(kept, key=kept.get):
      first.setdefault(digests[f] or f, f)
    u = lambda r: _fraction(first[digests[r[0]] or r[0]])
    train = splits["train"]
    splits["val"] = [r for r in train if u(r) < d.val_fraction]
    splits["train"] = [r for r in train if u(r) >= d.val_fraction]
  near = _same_content(path, [(kept[r[0]], r[0], s, digests[r[0]])
                              for s, items in splits.items() for r in items], has_split)
  for split, items in splits.items():
    if not items and unlabeled[split]:
      raise UserError(f"folder: split {split!r} of {path} has {unlabeled[split]} rows but none with "
                      "a label (rows without labels are left out); give them labels, or set "
                      "data.keep_unlabeled=True to use them as images with none of the labels")
    if not items:
      fix = "add rows with that split" if has_split else "set data.test_fraction/val_fraction above 0"
      raise UserError(f"folder: split {split!r} of {path} is empty; {fix}")
  return names, splits, near


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """One manifest: its label names and rows per split (the name is a hash of them)."""
  root: str = ""
  names: tuple = ()
  splits: dict = dataclasses.field(default_factory=dict)
  exif_orientation: bool = True
  max_pixels: int = reader.DEFAULT_MAX_PIXELS


class LabelledFolder(tfds.core.GeneratorBasedBuilder):
  """The user's image folder with multi-label annotations."""
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First version.", "1.1.0": "Explicit negatives and unknown labels.",
                   "1.2.0": "Images stored as mlc_jax.data.reader reads them (EXIF orientation, "
                            "16-bit and palette rules); data.max_pixels."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=labelled_image_features("negatives", "unknown"),
        metadata=tfds.core.MetadataDict(), description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # the files are local
    self.info.metadata.update(labels=list(self.builder_config.names), skipped=[])
    return {s: self._generate_examples(items) for s, items in self.builder_config.splits.items()}

  def _generate_examples(self, items):
    skipped, cfg = SkipLog(), self.builder_config
    for filename, present, absent, unknown in items:
      data, reason = read_image(os.path.join(cfg.root, filename), exif=cfg.exif_orientation,
                                max_pixels=cfg.max_pixels)
      if data is None:
        skipped.add(os.path.join(self.builder_config.root, filename), reason)
        continue
      yield filename, {"image": data, "image/filename": filename, "labels": present,
                       "negatives": absent, "unknown": unknown}
    self.info.metadata["skipped"] = self.info.metadata["skipped"] + skipped.items


def source(config):
  """Source for the user's folder (built into data_dir on first use, rebuilt when the manifest changes)."""
  names, splits, near = read_manifest(config)
  root = os.path.abspath(config.data.manual_dir)
  exif, max_pixels = bool(config.data.exif_orientation), int(config.data.max_pixels)
  key = json.dumps([root, names, splits, exif, max_pixels], sort_keys=True)
  cfg = FolderConfig(name="m" + hashlib.sha256(key.encode()).hexdigest()[:16], root=root,
                     names=tuple(names), splits=splits, exif_orientation=exif,
                     max_pixels=max_pixels)
  b = prepare(LabelledFolder(config=cfg, data_dir=config.data.data_dir or None), name="folder")
  unlisted = config.data.unlisted
  return Source("folder", b, {s: s for s in SPLITS}, lambda ex: ex["labels"], names,
                target_fn=lambda ex, split: targets(ex, len(names), unlisted),
                skipped=b.info.metadata["skipped"],
                notes={"near_duplicates": near} if near else None,  # shown by --mode=data_report
                options={"manifest": cfg.name, "unlisted": unlisted, "exif_orientation": exif,
                         "max_pixels": max_pixels},
                protocol={"split": "the label file's split column, or by filename hash",
                          "difficult": "n/a", "unlisted_labels": unlisted,
                          "unlabeled_images": "kept" if config.data.keep_unlabeled else "dropped"})


def targets(example, num_classes, unlisted):
  """int8 (C,) target of a stored row: listed 1, -listed 0, ?listed -1, unlisted 0 or -1."""
  present = multi_hot(example["labels"], num_classes)
  absent = multi_hot(example["negatives"], num_classes)
  unknown = multi_hot(example["unknown"], num_classes)
  rest = -1.0 if unlisted == "unknown" else 0.0
  listed = tf.where(present > 0, 1.0, tf.where(absent > 0, 0.0, rest))
  return tf.cast(tf.where(unknown > 0, -1.0, listed), tf.int8)
