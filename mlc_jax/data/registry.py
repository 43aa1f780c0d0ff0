"""The dataset registry: config.dataset -> a Source (mlc_jax.data.source.Source).

Each entry names the module and function that builds the Source from the config; modules are
imported on demand so `shapes` never imports the COCO code and vice versa.
"""
import importlib

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


def names():
  """The known dataset names."""
  return sorted(DATASETS)


def get(config):
  """The Source for config.dataset (prepared on first use, reused afterwards)."""
  name = config.dataset
  if "+" in name:  # a mixture of registered datasets (mlc_jax.data.mixture)
    from mlc_jax.data import mixture  # noqa: PLC0415
    return mixture.source(config, get, DATASETS)
  if name not in DATASETS:
    raise UserError(f"dataset={name!r} is unknown; known datasets: {', '.join(names())}")
  module, function = DATASETS[name]
  return getattr(importlib.import_module(module), function)(config)
