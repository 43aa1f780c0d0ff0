"""`shapes`: a synthetic multi-label set drawn with Pillow, deterministic by seed.

Each image holds 1-4 distinct shapes with random colour, size, position and rotation on a
cluttered background. Colour, size and position are drawn independently of the class, so only
form tells classes apart; some pairs differ only in form (disc vs ring, filled square vs
rectangle outline). Drawn by .shapes_draw in worker processes (one per core), generated once into
data_dir as a TFDS dataset and reused; `source(config)` opens it for the pipeline.

`shapes_single` (`single_source`) is the demo's source task, as ImageNet is to COCO: one shape per
image from SINGLE_CLASSES (the 8 shapes and 8 others), the same clutter, colours and sizes, from
its own random stream; a single-label set (softmax training), read through the same pipeline.
"""
import concurrent.futures
import dataclasses
import multiprocessing

import tensorflow_datasets as tfds

from mlc_jax.data import pipeline
from mlc_jax.data.datasets.shapes_draw import (CLASSES, SINGLE_CLASSES, SPLITS, encode_png,
                                                render, render_example, render_single)
from mlc_jax.data.source import Source, prepare

__all__ = ["CLASSES", "SINGLE_CLASSES", "SPLITS", "Shapes", "encode_png", "render",
           "render_single", "shapes_config", "single_source", "source"]


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Generation options; the config name encodes them so each variant is its own cached dataset."""
  image_size: int = 64
  seed: int = 0
  split_sizes: tuple = (6000, 1000, 2000)
  single: bool = False  # shapes_single: one shape of SINGLE_CLASSES per image


def shapes_config(image_size, seed, split_sizes, single=False):
  """The BuilderConfig for these options (its name keys the on-disk cache)."""
  name = (f"{'single_' if single else ''}px{image_size}_seed{seed}_n"
          f"{'-'.join(str(int(n)) for n in split_sizes)}")
  return ShapesConfig(name=name, image_size=int(image_size), seed=int(seed),
                      split_sizes=tuple(int(n) for n in split_sizes), single=bool(single))


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
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(
                names=SINGLE_CLASSES if self.builder_config.single else CLASSES)),
        }),
        description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {split: self._generate_examples(split, n) for split, n in zip(SPLITS, cfg.split_sizes)}

  def _generate_examples(self, split, count):
    cfg = self.builder_config
    jobs = [(cfg.seed, split, index, cfg.image_size, cfg.single) for index in range(count)]
    workers = min(pipeline.host_cores(), max(1, count // 256))
    if workers < 2:
      yield from map(render_example, jobs)
      return
    # spawn, not fork: this process runs TensorFlow's and JAX's threads, which fork can deadlock.
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")) as pool:
      yield from pool.map(render_example, jobs, chunksize=64)


def builder(config, single=False):
  """The Shapes TFDS builder for config.data.shapes_* in config.data.data_dir."""
  d = config.data
  cfg = shapes_config(d.shapes_image_size, d.shapes_seed,
                      (d.shapes_train, d.shapes_val, d.shapes_test), single)
  return Shapes(config=cfg, data_dir=d.data_dir or None)


def source(config):
  """Source over the generated shapes (train/val/test as generated)."""
  b = prepare(builder(config), name="shapes")
  return Source("shapes", b, {s: s for s in SPLITS}, lambda ex: ex["labels"], CLASSES,
                options={"seed": config.data.shapes_seed})


def single_source(config):
  """Source over the generated shapes_single (one label per image; train/val/test as generated)."""
  b = prepare(builder(config, single=True), name="shapes_single")
  return Source("shapes_single", b, {s: s for s in SPLITS}, lambda ex: ex["labels"],
                SINGLE_CLASSES, options={"seed": config.data.shapes_seed},
                protocol={"task": "single-label: one shape of 16 per image (softmax training)"})
