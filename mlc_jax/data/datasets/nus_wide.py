"""NUS-WIDE as a TFDS builder over a manual download in the official layout.

    MANUAL_DIR/Concepts81.txt                                  the 81 concept names, one a line
    MANUAL_DIR/ImageList/TrainImagelist.txt, TestImagelist.txt  e.g. `actor\\0001_2124494179.jpg`
    MANUAL_DIR/Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt   one 0/1 a line
    MANUAL_DIR/Flickr/<folder>/<file>.jpg                      the images (or the same tree at MANUAL_DIR/)

Official split: 161,789 train / 107,859 test. Images missing from the user's copy are counted and
left out; unreadable files are skipped and counted; images with none of the concepts are dropped
when the dataset is built, or kept (all-zero target) with data.keep_unlabeled=True. Published
results drop them from test: under eval.protocol='literature' the kept ones get an unknown (-1)
target in val and test, which every metric leaves out. All counts go into the dataset's metadata
and the data report. Validation is carved from train (data.val_fraction). Images are stored as
the papers' loaders read them: EXIF orientation not applied (data.exif_orientation does not apply
here), the default pixel limit (mlc_jax.data.reader.DEFAULT_MAX_PIXELS).
"""
import dataclasses
import os

import tensorflow_datasets as tfds

from mlc_jax.data.image_files import SkipLog, labelled_image_features, read_image
from mlc_jax.data.source import EVAL_SPLITS, Source, carve, prepare
from mlc_jax.errors import UserError

INSTRUCTIONS = """Request NUS-WIDE from https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html
(image URLs or the image archive, plus Groundtruth, ImageList and Concepts81.txt) and unpack it so that
MANUAL_DIR holds Concepts81.txt, ImageList/, Groundtruth/TrainTestLabels/ and Flickr/<folder>/<file>.jpg.
Then set data.manual_dir=MANUAL_DIR."""


def _lines(path, what):
  """Non-empty stripped lines of a text file; UserError naming it when it is missing."""
  if not os.path.isfile(path):
    raise UserError(f"nus_wide: {what} {path} does not exist; see BUILD.md for the NUS-WIDE layout")
  with open(path, encoding="utf-8", errors="replace") as f:
    return [line.strip() for line in f]


def read_split(root, split, concepts):
  """(image list entries, labels as lists of concept ids) of the official Train or Test split."""
  entries = [e for e in _lines(os.path.join(root, "ImageList", f"{split}Imagelist.txt"), "image list") if e]
  labels = [[] for _ in entries]
  for cid, concept in enumerate(concepts):
    path = os.path.join(root, "Groundtruth", "TrainTestLabels", f"Labels_{concept}_{split}.txt")
    values = _lines(path, "label file")
    while values and not values[-1]:
      values.pop()
    if len(values) != len(entries):
      raise UserError(f"nus_wide: {path} has {len(values)} lines but {split}Imagelist.txt lists "
                      f"{len(entries)} images; the files must be from the same NUS-WIDE release")
    for line, value in enumerate(values, 1):
      if value not in ("0", "1"):
        raise UserError(f"nus_wide: {path} line {line}: expected 0 or 1, got {value!r}")
      if value == "1":
        labels[line - 1].append(cid)
  return entries, labels


@dataclasses.dataclass
class NusWideConfig(tfds.core.BuilderConfig):
  """keep_unlabeled: keep images with none of the 81 concepts."""
  keep_unlabeled: bool = False


class NusWide(tfds.core.GeneratorBasedBuilder):
  """NUS-WIDE (81 concepts) from a manual download."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First version.",
                   "1.1.0": "Images stored as mlc_jax.data.reader reads them (16-bit, palette)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = [NusWideConfig(name="keep_unlabeled", keep_unlabeled=True),
                     NusWideConfig(name="drop_unlabeled", keep_unlabeled=False)]

  def _info(self):
    return self.dataset_info_from_configs(
        features=labelled_image_features(), metadata=tfds.core.MetadataDict(), description=__doc__)

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    concepts = [c for c in _lines(os.path.join(root, "Concepts81.txt"), "concept list") if c]
    images = os.path.join(root, "Flickr") if os.path.isdir(os.path.join(root, "Flickr")) else root
    self.info.metadata.update(labels=concepts, skipped=[], missing={}, unlabeled={},
                              keep_unlabeled=self.builder_config.keep_unlabeled)
    splits = {}
    for tfds_split, official in (("train", "Train"), ("test", "Test")):
      entries, labels = read_split(root, official, concepts)
      splits[tfds_split] = self._generate_examples(tfds_split, images, entries, labels)
    return splits

  def _generate_examples(self, split, images, entries, labels):
    meta = self.info.metadata
    skipped, missing, unlabeled = SkipLog(), 0, 0
    for entry, ids in zip(entries, labels):
      path = os.path.join(images, *entry.replace("\\", "/").split("/"))
      if not os.path.exists(path):
        missing += 1
        continue
      if not ids:
        unlabeled += 1
        if not self.builder_config.keep_unlabeled:
          continue
      data, reason = read_image(path, exif=False)  # as stored: the literature's protocol
      if data is None:
        skipped.add(path, reason)
        continue
      yield entry, {"image": data, "image/filename": entry, "labels": ids}
    meta["skipped"] = meta["skipped"] + skipped.items
    meta["missing"] = {**meta["missing"], split: missing}
    meta["unlabeled"] = {**meta["unlabeled"], split: unlabeled}


def source(config):
  """Source for nus_wide (train/val carved from the official train, test = official test)."""
  if not config.data.manual_dir:
    raise UserError("dataset=nus_wide needs data.manual_dir=DIR, the NUS-WIDE tree; see BUILD.md")
  name = "keep_unlabeled" if config.data.keep_unlabeled else "drop_unlabeled"
  b = prepare(NusWide(config=name, data_dir=config.data.data_dir or None), name="nus_wide",
              manual_dir=config.data.manual_dir, hint=INSTRUCTIONS)
  meta = b.info.metadata
  splits = carve(b, "train", config.data.val_fraction, name="nus_wide")
  splits["test"] = "test"
  notes = {"missing_images": dict(meta["missing"]), "images_without_labels": dict(meta["unlabeled"]),
           "images_without_labels_kept": bool(meta["keep_unlabeled"])}
  labels, protocol, kept = meta["labels"], config.eval.protocol, bool(meta["keep_unlabeled"])
  drop = protocol == "literature"
  return Source("nus_wide", b, splits, lambda ex: ex["labels"], labels,
                unlabeled_unknown=EVAL_SPLITS if drop else (),
                skipped=meta["skipped"], notes=notes,
                options={"val_fraction": config.data.val_fraction, "config": name,
                         "protocol": protocol},
                protocol={"split": "official Train less a validation tail / official Test",
                          "difficult": "n/a",
                          "unlabeled_images": "dropped" if drop or not kept else "kept",
                          "unlabeled_images_train": "kept" if kept else "dropped"})
