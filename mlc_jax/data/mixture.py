"""Mixtures: one dataset made of several, over the union of their labels (config.dataset='a+b').

  config.dataset = "coco/2014+nus_wide"    (registered names joined by '+'; a part may be named
                                            ALIAS=NAME, e.g. "tools=folder+kitchen=folder")
  config.data.sources.ALIAS = {KEY: value}  (data.KEY for that source alone, and `weight`)

A part's alias is its ALIAS= prefix, else its name with '/' as '_' (coco/2014 -> coco_2014); each
part is read by its own dataset code with the config's data settings plus data.sources.ALIAS.

Labels: the union, in the parts' order. Two labels are one when they have the same name or the
alignment file (data.label_alignment; default resources/label_alignment.json) puts them in one
`same` group; the union label takes the name of the first part that has it. An alignment key is a
part's alias, its name or its family (coco/2014 -> coco). For an image, the labels its part
annotates are its part's own targets (1/0/-1); every other label is -1 (unknown), except where an
`implies` rule of the file says that one of the image's positive labels certainly makes it
positive. Nothing is ever implied absent.

Order: a split's stored order is the parts' splits one after another. Training draws its epoch
(as many images as the parts have) by part weight (data.sources.ALIAS.weight; 0 or unset: the
part's training size, i.e. proportional): the counts are the weights' exact shares (largest
remainder) and their order a permutation seeded by (seed, epoch), each part's images in successive seeded
permutations, so an epoch is deterministic, resumable from any batch, and the same draw sequence
for every process count.
"""
import hashlib
import json
import pathlib

import ml_collections
import numpy as np
import tensorflow as tf

from mlc_jax.data.source import Source
from mlc_jax.errors import UserError

ALIGNMENT = pathlib.Path(__file__).resolve().parents[1] / "resources" / "label_alignment.json"


def aliases(name):
  """[(alias, dataset)] of a '+' name as written (unchecked): ALIAS=NAME, or NAME with / as _."""
  out = []
  for part in str(name).split("+"):
    alias, _, dataset = part.rpartition("=")
    out.append((alias or dataset.replace("/", "_"), dataset))
  return out


def require_single(config, what):
  """UserError before any work when config.dataset is a mixture: `what` scores one dataset."""
  if "+" in config.dataset:
    parts = ", ".join(d for _, d in aliases(config.dataset))
    raise UserError(f"dataset={config.dataset!r} is a mixture; {what} is scored against one "
                    f"dataset: give one of its parts with --config.dataset=NAME ({parts})")


def parse(name, known):
  """[(alias, dataset)] of a '+' name, or UserError naming the part and the fix."""
  parts = []
  for alias, dataset in aliases(name):
    if dataset not in known:
      raise UserError(f"dataset={name!r}: {dataset!r} is not a known dataset; known: "
                      f"{', '.join(sorted(known))}")
    if not alias.isidentifier():
      raise UserError(f"dataset={name!r}: alias {alias!r} must be a Python identifier (it names "
                      "config.data.sources.ALIAS)")
    if alias in [a for a, _ in parts]:
      raise UserError(f"dataset={name!r}: two parts are named {alias!r}; name them, e.g. "
                      f"a={dataset}+b={dataset}")
    parts.append((alias, dataset))
  if len(parts) < 2:
    raise UserError(f"dataset={name!r}: a mixture joins two or more datasets with '+'")
  return parts


def part_config(config, alias, dataset):
  """The config a part is read with: dataset=its name, data.* updated by data.sources.ALIAS
  (whose keys the config check has held to data settings and weight)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.dataset = dataset
  c.data.sources = ml_collections.ConfigDict()  # a part is one dataset: its settings merged below
  for key, value in (config.data.sources.get(alias, {}) or {}).items():
    if key != "weight":
      c.data[key] = value
  return c


def _keys(alias, dataset):
  return (alias, dataset, dataset.split("/")[0])


def _load(path):
  try:
    table = json.loads(pathlib.Path(path).read_text())
  except FileNotFoundError:
    raise UserError(f"data.label_alignment={str(path)!r}: no such file") from None
  except json.JSONDecodeError as e:
    raise UserError(f"data.label_alignment file {path} is not JSON: {e}") from None
  if not isinstance(table, dict) or not all(isinstance(table.get(k, []), list)
                                            for k in ("same", "implies")):
    raise UserError(f"{path}: expected an object with lists 'same' and 'implies' (see "
                    "resources/label_alignment.json)")
  return table


def align(parts, path=None):
  """(union labels, [union column of each of a part's labels], [[(part col, union col)] implied
  positives per part]) for parts [(alias, dataset, labels)], checked against the file."""
  path = path or ALIGNMENT
  table = _load(path)
  listed = table.get("datasets", {})
  owner = {}  # alignment key -> index of the part it names
  for i, (alias, dataset, _) in enumerate(parts):
    for key in _keys(alias, dataset):
      owner.setdefault(key, i)

  def check(key, label, where):
    """True when the entry applies to a part of this mixture; UserError on an unknown label:
    one the file's `datasets` list for the key lacks, or (without a list) the part lacks. A
    listed label the part does not have (a dataset read with fewer labels) does not apply."""
    names = listed.get(key)
    if names is not None and label not in names:
      raise UserError(f"{path}: {where} names {key} label {label!r}, which its 'datasets' list "
                      f"for {key} does not have; correct the file")
    if key in owner and names is None and label not in parts[owner[key]][2]:
      raise UserError(f"{path}: {where} names {key} label {label!r}, which part "
                      f"{parts[owner[key]][0]} does not have; correct the file or set "
                      "data.label_alignment=FILE")
    return key in owner and label in parts[owner[key]][2]
  group_of = {}  # (part, label) -> group id
  for g, group in enumerate(table.get("same", [])):
    if not isinstance(group, dict):
      raise UserError(f"{path}: 'same' entry {g} must be an object {{dataset: label, ...}}")
    for key, label in group.items():
      if check(key, label, f"'same' group {g}"):
        group_of[(owner[key], label)] = g
  union, column, columns = [], {}, []
  for i, (_, _, labels) in enumerate(parts):
    cols = []
    for label in labels:
      ident = ("group", group_of[(i, label)]) if (i, label) in group_of else ("name", label)
      if ident not in column and label in union:  # e.g. a grouped 'person' and a plain one
        ident = ("name", label)
      if ident not in column:
        column[ident] = len(union)
        union.append(label)
        if ident[0] == "group":  # later parts' same-named labels join it too
          column.setdefault(("name", label), column[ident])
      cols.append(column[ident])
    columns.append(np.asarray(cols, np.int32))
  implied = [[] for _ in parts]
  for r, rule in enumerate(table.get("implies", [])):
    try:
      (k1, l1), (k2, l2) = rule["if"], rule["then"]
    except (KeyError, TypeError, ValueError):
      raise UserError(f"{path}: 'implies' entry {r} must be {{\"if\": [dataset, label], "
                      "\"then\": [dataset, label]}") from None
    applies = [check(k, l, f"'implies' rule {r}") for k, l in ((k1, l1), (k2, l2))]
    if all(applies) and owner[k1] != owner[k2]:
      a, b = owner[k1], owner[k2]
      target = int(columns[b][parts[b][2].index(l2)])
      if target not in set(columns[a].tolist()):  # a part's own annotation always stands
        implied[a].append((parts[a][2].index(l1), target))
  return union, columns, implied


def quotas(n, weights):
  """Integer counts summing to n in the proportions of weights (largest remainder)."""
  w = np.asarray(weights, np.float64) / float(np.sum(weights))
  exact = n * w
  counts = np.floor(exact).astype(np.int64)
  for i in np.argsort(-(exact - counts), kind="stable")[:n - int(counts.sum())]:
    counts[i] += 1
  return counts


def draws(sizes, weights, seed, epoch):
  """An epoch's sequence of (part, position in that part) of sum(sizes) draws (module doc)."""
  n = int(sum(sizes))
  counts = quotas(n, weights)
  rng = np.random.default_rng([int(seed), int(epoch), 1])
  part = rng.permutation(np.repeat(np.arange(len(sizes)), counts))
  position = np.empty(n, np.int64)
  for i, size in enumerate(sizes):
    where = np.flatnonzero(part == i)
    passes = -(-len(where) // size) if size else 0
    perm = np.concatenate([np.random.default_rng([int(seed), int(epoch), 2, i, p]).permutation(size)
                           for p in range(passes)] or [np.zeros(0, np.int64)])
    position[where] = perm[:len(where)]
  return part, position


class Mixture(Source):
  """A Source made of parts (see the module doc): it overrides what a mixture does differently
  (reading, shares and positions, training order, fingerprint); the pipeline, the feature cache
  and the evaluation read it like any Source."""

  def __init__(self, name, parts, weights, labels, columns, implied, alignment):  # noqa: PLW0231 - no TFDS builder of its own
    self.name = name
    self.parts = parts  # [(alias, Source)]
    self.weights = [float(w) for w in weights]
    self.labels = list(labels)
    self.columns, self.implied = columns, implied
    self.alignment = str(alignment)
    self.num_examples = {split: sum(s.num_examples[split] for _, s in parts)
                         for split in parts[0][1].num_examples}
    self.skipped = [dict(r, path=f"{a}: {r['path']}") for a, s in parts for r in s.skipped]
    self.notes = {"annotates": {a: [self.labels[c] for c in cols]
                                for (a, _), cols in zip(parts, columns)},
                  "parts": {a: s.notes for a, s in parts}}
    self.protocol = {"mixture": {a: {"dataset": s.name, **s.protocol} for a, s in parts}}
    self.decoded = {}

  def offsets(self, split):
    """Each part's first position in the split's stored order."""
    return np.cumsum([0] + [s.num_examples[split] for _, s in self.parts])[:-1]

  def fingerprint(self):
    key = json.dumps([self.name, [(a, s.fingerprint()) for a, s in self.parts], self.labels,
                      [c.tolist() for c in self.columns], self.implied, self.weights],
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]

  def _convert(self, i):
    cols, implied, n = self.columns[i], self.implied[i], len(self.labels)

    def convert(example):
      own = tf.cast(example["labels"], tf.int32)
      union = tf.tensor_scatter_nd_update(tf.fill([n], -1), tf.constant(cols[:, None]), own)
      if implied:
        src, dst = (np.asarray(v, np.int32) for v in zip(*implied))
        hit = tf.where(tf.gather(own, src) == 1, 1, -1)
        union = tf.tensor_scatter_nd_max(union, tf.constant(dst[:, None]), hit)
      return dict(example, labels=tf.cast(union, tf.int8))
    return convert

  def local_count(self, split, index=0, count=1):
    return sum(self.local_sizes(split, index, count))

  def local_sizes(self, split, index=0, count=1):
    """Each part's share of the split on process `index`."""
    return [s.local_count(split, index, count) for _, s in self.parts]

  def positions(self, split, index=0, count=1):
    """Stored positions of this process's share, in the order `read` yields it: each part's
    share at the part's offset."""
    return np.concatenate([off + s.positions(split, index, count)
                           for off, (_, s) in zip(self.offsets(split), self.parts)])

  def train_order(self, seed, epoch, index=0, count=1, split="train"):
    """Indices into this process's share (as `read` yields it) of one training epoch."""
    sizes = self.local_sizes(split, index, count)
    part, position = draws(sizes, self.weights, seed, epoch)
    return np.cumsum([0] + sizes)[:-1][part] + position

  def read(self, split, *, process_index=0, process_count=1, shuffle_seed=None):
    """tf.data of {'image', 'labels' (union target)}: stored order, or (shuffle_seed) one
    epoch's weighted draws, the parts' shuffled streams cycled."""
    streams = [s.read(split, process_index=process_index, process_count=process_count,
                      shuffle_seed=shuffle_seed).map(self._convert(i))
               for i, (_, s) in enumerate(self.parts)]
    if shuffle_seed is None:
      ds = streams[0]
      for other in streams[1:]:
        ds = ds.concatenate(other)
      return ds
    sizes = self.local_sizes(split, process_index, process_count)
    part, _ = draws(sizes, self.weights, shuffle_seed, 0)
    choice = tf.data.Dataset.from_tensor_slices(part.astype(np.int64))
    return tf.data.Dataset.choose_from_datasets([s.repeat() for s in streams], choice)


def source(config, get, known):
  """The Mixture for config.dataset; get(config) reads one part."""
  spec = parse(config.dataset, known)
  parts, weights = [], []
  for alias, dataset in spec:
    parts.append((alias, get(part_config(config, alias, dataset))))
  for (alias, _), (_, s) in zip(spec, parts):
    w = (config.data.sources.get(alias, {}) or {}).get("weight", 0.0)
    if not (isinstance(w, (int, float)) and w >= 0):
      raise UserError(f"data.sources.{alias}.weight={w!r}: must be a number > 0, or 0 for the "
                      "part's size")
    weights.append(float(w) if w > 0 else float(s.num_examples["train"]))
  path = config.data.get("label_alignment", "") or ALIGNMENT
  labels, columns, implied = align([(a, d, s.labels) for (a, d), (_, s) in zip(spec, parts)],
                                   path)
  return Mixture(config.dataset, parts, weights, labels, columns, implied, path)
