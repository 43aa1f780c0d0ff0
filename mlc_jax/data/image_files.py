"""Checking image files once, when a dataset is built: what is skipped is counted, never fatal.

A builder calls `read_image(path)` for each listed file; a zero-byte, truncated, corrupt,
too large (data.max_pixels) or non-image file gives (None, reason), the builder records
{'path', 'reason'} in the dataset's metadata, logs it once, and leaves the file out. A readable
file is read by mlc_jax.data.reader (EXIF orientation, 16-bit and palette rules) and stored as
bytes that TensorFlow's decoder (mlc_jax.data.pixels.decode) turns into exactly those pixels:
its own bytes when they already do, else a PNG of the reader's array. So the pipeline never meets
a bad file and trains on the pixels `--mode=predict` and serve.py see for the same file.
"""
import io
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from mlc_jax.data import pixels, reader

log = logging.getLogger(__name__)


def labelled_image_features(*id_lists):
  """The TFDS features of a builder over local files: the image, its file name, its label indices
  (and further lists of label indices named by id_lists)."""
  ids = lambda: tfds.features.Sequence(tfds.features.Scalar(dtype=np.int64))
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "image/filename": tfds.features.Text(),
      "labels": ids(), **{name: ids() for name in id_lists}})


def read_image(path, *, exif=True, max_pixels=reader.DEFAULT_MAX_PIXELS):
  """(encoded bytes, None) for a readable image; (None, reason) for a file to skip."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    return None, f"cannot be read ({e.strerror})"
  try:
    array = reader.read(data, exif=exif, max_pixels=max_pixels)
  except reader.ImageError as e:
    return None, str(e)
  if not _decodes_to(data, array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    data = buffer.getvalue()
  return data, None


def _decodes_to(data, array):
  """Whether the pipeline's decoder turns data into exactly array."""
  try:
    decoded = pixels.decode(data).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.OpError):
    return False
  return decoded.shape == array.shape and np.array_equal(decoded, array)


class SkipLog:
  """Collects skipped files (path, reason) and logs each one once."""

  def __init__(self):
    self.items = []

  def add(self, path, reason):
    """Record and log one skipped file."""
    self.items.append({"path": os.fspath(path), "reason": reason})
    log.warning("skipping %s: %s", path, reason)
