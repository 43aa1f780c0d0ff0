"""The one image reader: a file, encoded bytes or a PIL image -> uint8 (H, W, 3) numpy array.

Dataset builds (folder, NUS-WIDE), `--mode=predict`, `Classifier.predict` and the exported
serve.py (which carries a copy of these rules; tests hold it equal) all read a picture here, so
the same file gives the same pixels on every path. PIL and numpy only: no TensorFlow import.

The rules, in order:
  1. width x height from the header above `max_pixels` (data.max_pixels) -> ImageError
     'too large', before a pixel is decoded (a 438 KB PNG can hold 20000 x 20000 pixels);
  2. EXIF orientation applied when `exif` (data.exif_orientation): a phone photo stored
     sideways with orientation 6 comes out upright;
  3. modes: 16-bit grey (I;16*, I) keeps its high byte (v >> 8), as Pillow and TensorFlow read
     16-bit RGB PNGs; palette (P, PA) becomes its colours; 1/L/LA grey is replicated to RGB;
     alpha (RGBA, LA, PA) is dropped, as TensorFlow's decoder drops it; CMYK, YCbCr, LAB, HSV
     and float images take Pillow's RGB conversion. Animations give their first frame.
"""
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The image types every path reads (dataset builds, --mode=predict, Classifier.predict), by suffix
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 90_000_000  # ~ Pillow's own bomb warning threshold (89.5 MP)
TOO_LARGE, UNDECODABLE, MISSING = "too large", "undecodable", "missing"
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


class ImageError(ValueError):
  """A picture that is not read: `kind` is TOO_LARGE, UNDECODABLE or MISSING; str() says why."""

  def __init__(self, kind, reason):
    super().__init__(reason)
    self.kind = kind


def check_size(image, max_pixels):
  """ImageError(TOO_LARGE) when the (not yet decoded) image has more than max_pixels pixels."""
  w, h = image.size
  if max_pixels and w * h > max_pixels:
    raise ImageError(TOO_LARGE, f"too large ({w} x {h} = {w * h / 1e6:.1f} megapixels, over "
                     f"data.max_pixels={max_pixels:,}; raise data.max_pixels to read it)")


def open_image(source, max_pixels=DEFAULT_MAX_PIXELS):
  """A path or encoded bytes -> an opened (header-only) PIL image whose size was checked."""
  data = source
  if not isinstance(source, (bytes, bytearray)):
    try:
      with open(os.fspath(source), "rb") as f:
        data = f.read()
    except FileNotFoundError:
      raise ImageError(MISSING, "does not exist") from None
    except OSError as e:
      raise ImageError(UNDECODABLE, f"cannot be read ({e.strerror})") from None
  if not data:
    raise ImageError(UNDECODABLE, "empty file (0 bytes)")
  try:
    with warnings.catch_warnings():  # our own limit replaces Pillow's bomb warning
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise ImageError(TOO_LARGE, f"too large for Pillow ({e})") from None
  except _DECODE_ERRORS as e:
    raise ImageError(UNDECODABLE, _reason(e)) from None
  check_size(image, max_pixels)
  return image


def read(source, *, exif=True, max_pixels=DEFAULT_MAX_PIXELS):
  """A path or encoded bytes -> uint8 (H, W, 3) by the rules above; ImageError otherwise."""
  image = open_image(source, max_pixels)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image.load()  # decodes every pixel: raises on truncated or corrupt data
      return to_rgb(image, exif=exif)
  except _DECODE_ERRORS as e:
    raise ImageError(UNDECODABLE, _reason(e)) from None


def to_rgb(image, *, exif=True, max_pixels=None):
  """A PIL image -> uint8 (H, W, 3) by the rules above (its EXIF orientation too, when exif)."""
  if max_pixels:
    check_size(image, max_pixels)
  if exif:
    image = ImageOps.exif_transpose(image)
  mode = image.mode
  if mode in _SIXTEEN_BIT:
    grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in ("P", "PA"):
    image = image.convert("RGBA")
    mode = "RGBA"
  if mode == "1":
    image, mode = image.convert("L"), "L"
  if mode in ("L", "LA", "La"):
    grey = np.asarray(image, dtype=np.uint8)
    grey = grey[..., 0] if grey.ndim == 3 else grey
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _reason(error):
  """One line: 'not a readable image (UnidentifiedImageError: ...)'."""
  text = str(error).splitlines()[0] if str(error) else ""
  return f"not a readable image ({type(error).__name__}: {text})"
