"""Checking image files once, when a dataset is built: what is skipped is counted, never fatal.

A builder calls `read_image(path)` for each listed file; a zero-byte, truncated, corrupt or
non-image file gives (None, reason), the builder records {'path', 'reason'} in the dataset's
metadata, logs it once, and leaves the file out. The files that pass are exactly the ones
TensorFlow's decoder (mlc_jax.data.images.decode) reads, so the pipeline never meets a bad file.
"""
import io
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image, UnidentifiedImageError

# Formats tf.io.decode_image reads; others that Pillow opens are re-encoded as PNG.
TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
log = logging.getLogger(__name__)


def labelled_image_features(*id_lists):
  """The TFDS features of a builder over local files: the image, its file name, its label indices
  (and further lists of label indices named by id_lists)."""
  ids = lambda: tfds.features.Sequence(tfds.features.Scalar(dtype=np.int64))
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "image/filename": tfds.features.Text(),
      "labels": ids(), **{name: ids() for name in id_lists}})


def read_image(path):
  """(encoded bytes, None) for a readable image; (None, reason) for a file to skip."""
  try:
    data = open(path, "rb").read()
  except OSError as e:
    return None, f"cannot be read ({e.strerror})"
  if not data:
    return None, "empty file (0 bytes)"
  try:
    with Image.open(io.BytesIO(data)) as im:
      fmt = im.format
      im.load()  # decodes every pixel: raises on truncated or corrupt data
      if fmt not in TF_FORMATS:
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, format="PNG")
        data = buffer.getvalue()
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    return None, f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
  try:
    tf.io.decode_image(data, channels=3, expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.OpError) as e:
    return None, f"TensorFlow cannot decode it ({e.message.splitlines()[0]})"
  return data, None


class SkipLog:
  """Collects skipped files (path, reason) and logs each one once."""

  def __init__(self):
    self.items = []

  def add(self, path, reason):
    """Record and log one skipped file."""
    self.items.append({"path": os.fspath(path), "reason": reason})
    log.warning("skipping %s: %s", path, reason)
