"""Decode and resize one image, the same way for training, evaluation and prediction.

The tf.data pipeline maps these functions over a dataset; `Classifier.predict` calls them eagerly
on paths, PIL images or arrays, so a picture gets identical pixels on both paths.
"""
import re

import numpy as np
import tensorflow as tf

from mlc_jax.errors import UserError

RESIZE_METHODS = ("plain", "crop")


def decode(image_bytes):
  """JPEG/PNG/GIF/BMP bytes -> uint8 (H, W, 3) tensor (grey and RGBA become RGB)."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize(image, image_size, method="plain"):
  """uint8 (H, W, 3) -> uint8 (image_size, image_size, 3).

  plain: stretch to the square (the proposal's choice). crop: scale the short side to
  image_size keeping the aspect ratio, then take the central square.
  """
  if method not in RESIZE_METHODS:
    raise UserError(f"data.resize={method!r} is not one of {RESIZE_METHODS}")
  image = tf.convert_to_tensor(image)
  if method == "crop":
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(image_size, tf.float32) / tf.reduce_min(shape)
    new_hw = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    image = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
  else:
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def to_array(item):
  """A path, PIL image or uint8/float (H, W, 3 or 4 or 1) array -> uint8 (H, W, 3) numpy array.

  Raises UserError naming the item when it cannot be read as an image.
  """
  if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
    path = str(item.decode() if isinstance(item, bytes) else item)
    try:
      data = tf.io.read_file(path)
      return decode(data).numpy()
    except (tf.errors.NotFoundError, FileNotFoundError):
      raise UserError(f"image {path} does not exist") from None
    except (tf.errors.InvalidArgumentError, tf.errors.OpError) as e:
      raise UserError(f"image {path} cannot be decoded ({_tf_reason(e)}); "
                      "remove it or replace it with a JPEG/PNG/GIF/BMP file") from None
  if hasattr(item, "convert") and hasattr(item, "size"):  # PIL.Image
    return np.asarray(item.convert("RGB"), dtype=np.uint8)
  array = np.asarray(item)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise UserError(f"an image array must be (H, W, 3) (or 1 or 4 channels); got shape {array.shape}")
  if array.dtype != np.uint8:
    if not np.issubdtype(array.dtype, np.number) or array.min() < 0 or array.max() > 255:
      raise UserError(f"an image array must hold uint8 0-255 values; got dtype {array.dtype}")
    array = np.round(array).astype(np.uint8)
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return array[..., :3]


def _tf_reason(error):
  """TensorFlow's message without its {{function_node ...}} and [Op:...] decorations."""
  text = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]( name:)?", "", error.message.splitlines()[0])
  return text.strip() or type(error).__name__


def load(item, image_size, method="plain"):
  """to_array + resize: what evaluation feeds the model for this item, as uint8 numpy."""
  return resize(to_array(item), image_size, method).numpy()
