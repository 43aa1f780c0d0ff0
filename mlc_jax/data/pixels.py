"""Decode and resize one image, the same way for training, evaluation and prediction.

The tf.data pipeline maps `decode` and `resize` over stored bytes; `--mode=predict` and
`Classifier.predict` read paths and PIL images with mlc_jax.data.reader (EXIF orientation, the
pixel limit, 16-bit and palette rules) and resize them with the same `resize`. Dataset builders
store bytes that `decode` turns into exactly the reader's pixels (data.image_files.read_image), and
JPEGs are decoded with the accurate integer DCT, which gives Pillow's pixels bit for bit, so a
picture gets identical pixels on every path.
"""
import numpy as np
import tensorflow as tf

from mlc_jax.data import reader
from mlc_jax.errors import UserError


def decode(image_bytes):
  """JPEG/PNG/GIF/BMP/WebP bytes -> uint8 (H, W, 3) tensor (grey and RGBA become RGB).

  JPEGs use the accurate integer DCT (TensorFlow's default, INTEGER_FAST, differs from Pillow and
  libjpeg's own default by up to 10 levels); other formats take tf.io.decode_image.
  """
  image = tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def resize(image, image_size, method="plain"):
  """uint8 (H, W, 3) -> uint8 (image_size, image_size, 3).

  plain: stretch to the square (the proposal's choice). crop: scale the short side to
  image_size keeping the aspect ratio, then take the central square.
  """
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


def to_array(item, *, exif=True, max_pixels=reader.DEFAULT_MAX_PIXELS):
  """A path, PIL image or uint8/float (H, W, 3 or 4 or 1) array -> uint8 (H, W, 3) numpy array.

  Paths and PIL images go through mlc_jax.data.reader (exif: apply EXIF orientation; max_pixels:
  the pixel limit). Raises UserError naming the item when it cannot be read as an image.
  """
  if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
    path = str(item.decode() if isinstance(item, bytes) else item)
    try:
      return reader.read(path, exif=exif, max_pixels=max_pixels)
    except reader.ImageError as e:
      if e.kind == reader.MISSING:
        raise UserError(f"image {path} does not exist") from None
      fix = "" if e.kind == reader.TOO_LARGE else (
          "; remove it or replace it with a JPEG/PNG/GIF/BMP/WebP file")
      raise UserError(f"image {path}: {e}{fix}") from None
  if hasattr(item, "convert") and hasattr(item, "size"):  # PIL.Image
    try:
      return reader.to_rgb(item, exif=exif, max_pixels=max_pixels)
    except reader.ImageError as e:
      raise UserError(f"PIL image: {e}") from None
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


def load(item, image_size, method="plain", *, exif=True, max_pixels=reader.DEFAULT_MAX_PIXELS):
  """to_array + resize: what evaluation feeds the model for this item, as uint8 numpy."""
  return resize(to_array(item, exif=exif, max_pixels=max_pixels), image_size, method).numpy()
