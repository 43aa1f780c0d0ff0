"""`shapes`: a synthetic multi-label set drawn with Pillow, deterministic by seed.

Each image holds 1-4 distinct shapes with random colour, size, position and rotation on a
cluttered background. Colour, size and position are drawn independently of the class, so only
form tells classes apart; some pairs differ only in form (disc vs ring, filled square vs
rectangle outline). Drawn by .shapes_draw in worker processes (one per core), generated once into
data_dir as a TFDS dataset and reused; `source(config)` opens it for the pipeline.
"""
import concurrent.futures
import dataclasses
import multiprocessing

import tensorflow_datasets as tfds

from mlc_jax.data import pipeline
from mlc_jax.data.datasets.shapes_draw import CLASSES, SPLITS, encode_png, render, render_example
from mlc_jax.data.source import Source, prepare

__all__ = ["CLASSES", "SPLITS", "Shapes", "encode_png", "render", "shapes_config", "source"]


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Generation options; the config name encodes them so each variant is its own cached dataset."""
  image_size: int = 64
  seed: int = 0
  split_sizes: tuple = (6000, 1000, 2000)


def shapes_config(image_size, seed, split_sizes):
  """The BuilderConfig for these options (its name keys the on-disk cache)."""
  name = f"px{image_size}_seed{seed}_n{'-'.join(str(int(n)) for n in split_sizes)}"
  return ShapesConfig(name=name, image_size=int(image_size), seed=int(seed),
                      split_sizes=tuple(int(n) for n in split_sizes))


class Shapes(tfds.core.GeneratorBasedBuilder):
  """The synthetic shapes dataset (features: image PNG, labels = sequence of class ids)."""
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First version.", "1.1.0": "Shapes contrast with their background.",
                   "1.2.0": "Less clutter and overlap (the demo learns in CPU minutes)."}

  def _info(self):
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "image/filename": tfds.features.Text(),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=CLASSES)),
        }),
        description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {split: self._generate_examples(split, n) for split, n in zip(SPLITS, cfg.split_sizes)}

  def _generate_examples(self, split, count):
    cfg = self.builder_config
    jobs = [(cfg.seed, split, index, cfg.image_size) for index in range(count)]
    workers = min(pipeline.host_cores(), max(1, count // 256))
    if workers < 2:
      yield from map(render_example, jobs)
      return
    # spawn, not fork: this process runs TensorFlow's and JAX's threads, which fork can deadlock.
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")) as pool:
      yield from pool.map(render_example, jobs, chunksize=64)


def builder(config):
  """The Shapes TFDS builder for config.data.shapes_* in config.data.data_dir."""
  d = config.data
  cfg = shapes_config(d.shapes_image_size, d.shapes_seed, (d.shapes_train, d.shapes_val, d.shapes_test))
  return Shapes(config=cfg, data_dir=d.data_dir or None)


def source(config):
  """Source over the generated shapes (train/val/test as generated)."""
  b = prepare(builder(config), name="shapes")
  return Source("shapes", b, {s: s for s in SPLITS}, lambda ex: ex["labels"], CLASSES,
                options={"seed": config.data.shapes_seed})
