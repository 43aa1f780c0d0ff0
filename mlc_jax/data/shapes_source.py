"""The `shapes` Source: builds (once) and opens the synthetic dataset of mlc_jax.data.shapes."""

from mlc_jax.data import shapes
from mlc_jax.data.source import Source, prepare
from mlc_jax.errors import UserError


def builder(config):
  """The Shapes TFDS builder for config.data.shapes_* in config.data.data_dir."""
  d = config.data
  sizes = (d.shapes_train, d.shapes_val, d.shapes_test)
  if min(sizes) < 1 or d.shapes_image_size < 16:
    raise UserError(f"shapes split sizes {sizes} must be >= 1 and data.shapes_image_size="
                    f"{d.shapes_image_size} >= 16")
  cfg = shapes.shapes_config(d.shapes_image_size, d.shapes_seed, sizes)
  return shapes.Shapes(config=cfg, data_dir=d.data_dir or None)


def source(config):
  """Source over the generated shapes (train/val/test as generated)."""
  b = prepare(builder(config), name="shapes")
  return Source("shapes", b, {s: s for s in shapes.SPLITS}, lambda ex: ex["labels"],
                shapes.CLASSES, options={"seed": config.data.shapes_seed})
