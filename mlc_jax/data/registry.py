"""The dataset registry: config.dataset -> a Source (mlc_jax.data.source.Source), and `check`, the
config check of what names datasets (config.dataset, a mixture's data.sources).

Each entry names the module and function that builds the Source from the config; modules are
imported on demand so `shapes` never imports the COCO code and vice versa. MANUAL lists the
datasets that read a folder the user gives (data.manual_dir), which `check` requires.
"""
import importlib

from mlc_jax.config import defaults
from mlc_jax.errors import UserError

DATASETS = {
    "shapes": ("mlc_jax.data.datasets.shapes", "source"),
    "shapes_single": ("mlc_jax.data.datasets.shapes", "single_source"),
    "coco/2014": ("mlc_jax.data.datasets.coco", "source"),
    "coco/2017": ("mlc_jax.data.datasets.coco", "source"),
    "voc/2007": ("mlc_jax.data.datasets.voc", "source"),
    "voc/2012": ("mlc_jax.data.datasets.voc", "source"),
    "nus_wide": ("mlc_jax.data.datasets.nus_wide", "source"),
    "folder": ("mlc_jax.data.datasets.folder", "source"),
    "fashion_collage": ("mlc_jax.data.datasets.fashion", "source"),
    "fashion_items": ("mlc_jax.data.datasets.fashion", "single_source"),
}


MANUAL = ("folder", "nus_wide")  # their images come from data.manual_dir (BUILD.md)


def names():
  """The known dataset names."""
  return sorted(DATASETS)


def check(config):
  """UserError before any work on config.dataset or a mixture's data.sources (name, key, fix)."""
  name = str(config.dataset)
  sources = defaults.flatten(config.data.get("sources", {}) or {})
  if "+" not in name:
    if name not in DATASETS:
      raise UserError(f"dataset={name!r}: unknown; known datasets: {', '.join(names())}")
    if name in MANUAL and not config.data.manual_dir:
      raise UserError(f"data.manual_dir='': dataset={name} needs the folder of its images "
                      "(see BUILD.md)")
    if sources:
      key = next(iter(sources))
      raise UserError(f"data.sources.{key}: dataset={name!r} is not a '+' mixture; data.sources "
                      "sets the data keys of a mixture's parts")
    return
  from mlc_jax.data import mixture  # noqa: PLC0415 - TensorFlow, only for a mixture
  parts = mixture.parse(name, DATASETS)
  aliases = [alias for alias, _ in parts]
  known = defaults.flatten(defaults.get_config())
  for key in sources:
    alias, _, field = key.partition(".")
    if alias not in aliases:
      raise UserError(f"data.sources.{key}: {alias!r} is not a part of dataset={name!r} (its "
                      f"parts: {', '.join(aliases)}); name a part of a '+' mixture")
    if field != "weight" and f"data.{field}" not in known:
      raise UserError(f"data.sources.{key}: data.{field} is not a data setting; a part may set "
                      "data.* keys and weight")
  for alias, dataset in parts:
    own = config.data.sources.get(alias, {}) or {}
    if dataset in MANUAL and not (own.get("manual_dir") or config.data.manual_dir):
      raise UserError(f"data.sources.{alias}.manual_dir='': part {alias} ({dataset}) needs the "
                      "folder of its images (see BUILD.md)")


def get(config):
  """The Source for config.dataset (checked first; prepared on first use, reused afterwards)."""
  check(config)
  return _open(config)


def _open(config):
  name = config.dataset
  if "+" in name:  # a mixture of registered datasets (mlc_jax.data.mixture): each part opened here
    from mlc_jax.data import mixture  # noqa: PLC0415 - TensorFlow, only for a mixture
    return mixture.source(config, _open, DATASETS)
  module, function = DATASETS[name]
  return getattr(importlib.import_module(module), function)(config)
