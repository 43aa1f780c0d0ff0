"""Baseline 1 of the proposal: ImageNet VGG16 without fine-tuning, its 1000 classes mapped onto the labels.

A mapping file (resources/imagenet_to_{voc,coco,nus_wide}.json, or eval.mapping) lists per label
the ImageNet classes that depict it; a label's score is the max (or the sum) of their softmax
probabilities. Labels without ImageNet counterpart are reported and left out of the means.

The same machinery scores any single-label classifier file mlc_jax wrote (`--mode=export
--format=keras_h5` of a run with a one-layer head, e.g. the demo's shapes_single pretraining):
its classes carry names, so a label maps to the source class of the same name.
"""
import importlib.resources
import json
import pathlib

import ml_collections
import numpy as np
from absl import logging

from mlc_jax import config as config_lib, models, parallel, workdir as workdir_lib
from mlc_jax.data import mixture, registry
from mlc_jax.errors import UserError
from mlc_jax.eval import protocol, report, results, scoring
from mlc_jax.models import weights as weights_lib
from mlc_jax.models.imagenet import IMAGENET_WNIDS



def mapping_path(config):
  """eval.mapping, or the packaged file for config.dataset's family (voc, coco, nus_wide)."""
  if config.eval.get("mapping", ""):
    return pathlib.Path(config.eval.mapping)
  family = config.dataset.split("/")[0]
  resource = importlib.resources.files("mlc_jax").joinpath(f"resources/imagenet_to_{family}.json")
  if not resource.is_file():
    raise UserError(f"no ImageNet mapping file ships for dataset {config.dataset!r} (only voc, coco "
                    "and nus_wide); write one like resources/imagenet_to_voc.json and set "
                    "eval.mapping=FILE")
  return pathlib.Path(str(resource))


def load_mapping(path, labels):
  """({label index: [ImageNet indices]}, unmapped label names) of mapping file `path` for `labels`.

  Raises UserError for a missing or malformed file, labels the dataset lacks, and ImageNet classes
  that do not exist (index out of range or wnid not at that index).
  """
  path = pathlib.Path(path)
  try:
    doc = json.loads(path.read_text())
    entries = doc["labels"]
  except FileNotFoundError:
    raise UserError(f"mapping file {path} not found; set eval.mapping to an existing file") from None
  except (ValueError, KeyError, TypeError):
    raise UserError(f"mapping file {path} is not a JSON object with 'labels': "
                    "{label: [[index, wnid, name], ...]}") from None
  unknown_labels = sorted(set(entries) - set(labels))
  if unknown_labels:
    raise UserError(f"mapping file {path} names labels the dataset lacks: {unknown_labels[:5]}; "
                    f"the dataset's labels are {labels[:8]}...: fix the file or pick its dataset")
  groups, bad = {}, []
  for label, classes in entries.items():
    indices = []
    for entry in classes:
      index, wnid = (entry[0], entry[1]) if isinstance(entry, (list, tuple)) else (entry, None)
      if not isinstance(index, int) or not 0 <= index < len(IMAGENET_WNIDS) or (
          wnid is not None and IMAGENET_WNIDS[index] != wnid):
        bad.append(f"{label}: {entry}")
      else:
        indices.append(index)
    if indices:
      groups[labels.index(label)] = indices
  if bad:
    raise UserError(f"mapping file {path} names {len(bad)} unknown ImageNet classes ({'; '.join(bad[:3])}); "
                    "entries are [index, wnid, name] with index 0-999 in Keras order "
                    "(resources/imagenet_classes.tsv)")
  unmapped = [name for i, name in enumerate(labels) if i not in groups]
  return groups, unmapped


def map_scores(probabilities, groups, num_labels, reduce="max"):
  """ImageNet probabilities (N, 1000) -> label scores (N, num_labels); unmapped columns stay 0."""
  out = np.zeros((len(probabilities), num_labels), np.float32)
  for column, indices in groups.items():
    part = probabilities[:, indices]
    out[:, column] = part.max(axis=1) if reduce == "max" else np.minimum(part.sum(axis=1), 1.0)
  return out


def by_name(source_names, labels):
  """({label index: [source class index]}, unmapped label names): classes mapped by equal names."""
  groups = {i: [source_names.index(name)] for i, name in enumerate(labels) if name in source_names}
  return groups, [name for i, name in enumerate(labels) if i not in groups]


def named_source(config):
  """(model, class names, image size, weights path, file attributes) when the baseline's weights
  file is a named single-label classifier mlc_jax wrote; None for ImageNet files."""
  spec = config.eval.get("baseline_weights", "") or config.model.weights
  attrs = {} if not spec or spec == "imagenet" else weights_lib.file_attrs(spec)
  if not json.loads(attrs.get("labels") or "[]"):
    return None
  model, names, size = models.file_classifier(spec, dtype=config.dtype)
  return model, names, size, str(spec), attrs


def imagenet_model(config):
  """(backbone with its ImageNet top, weights path): eval.baseline_weights or model.weights
  ('imagenet' fetches Keras's file); for VGG arch, width and batch norm come from the file, for
  the other families from model.arch, model.width and model.resnet_layout."""
  spec = config.eval.get("baseline_weights", "") or config.model.weights
  if not spec:
    raise UserError("the ImageNet baseline needs ImageNet weights: set eval.baseline_weights (or "
                    "model.weights) to 'imagenet' or a Keras .h5 / safetensors file with the top")
  m = config.model
  return models.imagenet_classifier(m.arch, spec, width=m.width,
                                    resnet_layout=m.get("resnet_layout", "torchvision"),
                                    cache_dir=m.cache_dir or None, dtype=config.dtype)


def baseline(config, workdir, split="test"):
  """Scores `split` with ImageNet VGG16 (or a named single-label classifier file) mapped onto the
  labels; writes WORKDIR/eval/SPLIT/baseline
  (metrics.json, scores.npz, plots) and the report; returns the metrics dict."""
  config_lib.validate(config)
  registry.check(config)
  mixture.require_single(config, "the baseline")
  named = named_source(config)
  if named is None:
    path = mapping_path(config)  # cheap checks first: before the dataset is opened
    if not (config.eval.get("baseline_weights", "") or config.model.weights):
      imagenet_model(config)  # raises the missing-weights error
  source = registry.get(config)
  if named is None:
    groups, unmapped = load_mapping(path, source.labels)
    mapping = path.name if path.parent.name == "resources" else str(path)
    if not groups:
      raise UserError(f"mapping file {path} maps none of the labels of {config.dataset}")
    model, weights = imagenet_model(config)
    size, backbone = 224, f"{protocol.arch_name(config.model.arch)} (ImageNet, unmodified)"
  else:
    model, names, size, weights, attrs = named
    groups, unmapped = by_name(names, source.labels)
    mapping, backbone = "by name", (f"{attrs.get('arch', 'vgg').upper()} pretrained on "
                                    f"{attrs.get('dataset', '?')} ({len(names)} classes, unmodified)")
    if not groups:
      raise UserError(f"weights file {weights}: none of its classes {names[:8]} is a label of "
                      f"{config.dataset}")
  # The top takes the images it was trained on (224 px for ImageNet), whatever the config says.
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.image_size = size
  score = scoring.scorer(model, cfg, parallel.mesh(), "softmax")
  probabilities, labels, images = score(source, split, keep_images=int(config.eval.examples))
  scores = map_scores(probabilities, groups, len(source.labels), config.eval.baseline_reduce)
  mapped = sorted(groups)
  meta = {"kind": "baseline", "dataset": config.dataset, "split": split, "weights": weights,
          "mapping": mapping, "reduce": config.eval.baseline_reduce, "source": backbone,
          "mapped": [source.labels[i] for i in mapped], "unmapped": unmapped,
          "protocol": dict(protocol.record(cfg, source, split, labels[:, mapped]),
                           backbone=backbone)}
  out = workdir_lib.eval_dir(workdir, split)
  with workdir_lib.staged(out / "baseline") as staging:
    m = results.save(staging, scores, labels, source.labels, meta, config, columns=mapped,
                     images=images)
  logging.info("baseline on %s %s: mAP %.4f over %d mapped labels (%d unmapped)", config.dataset,
               split, m["mAP"], len(mapped), len(unmapped))
  if workdir_lib.is_chief():
    report.write(out, compare=config.eval.get("compare", ()))
  return m
