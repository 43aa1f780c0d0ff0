"""The files users' disks hold, made here, each with the pixels a reader must give (by numpy).

`write(folder, size)` writes them and returns ({name: expected uint8 (H, W, 3)}, bomb name). The
expected arrays are computed from the arrays the files were made from, not by any reader:
  exif6.jpg     stored W x H = 1.5 size x size with EXIF orientation 6: upright = rot90 clockwise
                of the stored pixels (and upright.png holds exactly those pixels, without EXIF)
  grey16.png    16-bit greyscale: the high byte, replicated to RGB
  rgb16.png     16-bit RGB: the high byte of each channel
  palette.gif   an 8-bit palette: the palette's colours looked up by index
  rgba.png      RGBA: alpha dropped
  grey.png      8-bit greyscale: replicated to RGB
  lossless.webp WebP (lossless): the pixels
  photo.jpg     a plain JPEG: Pillow's decoding of it (libjpeg's accurate integer DCT)
  bomb.png      a grey PNG of BOMB_SIDE x BOMB_SIDE zeros (~140 KB on disk, 144 megapixels): over the
                default data.max_pixels; decoding it would take 432 MB as RGB
"""
import io
import struct
import zlib

import numpy as np
from PIL import Image

BOMB_SIDE = 12_000


def _png_chunk(kind, data):
  return (struct.pack(">I", len(data)) + kind + data
          + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side=BOMB_SIDE):
  """A valid greyscale PNG of side x side zeros, compressed row by row (small on disk)."""
  header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
  compressor, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
  for _ in range(side):
    parts.append(compressor.compress(row))
  parts.append(compressor.flush())
  return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
          + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


def _sixteen_bit_png(array):
  """A 16-bit PNG (grey (H, W) or RGB (H, W, 3)) written by hand: Pillow cannot write RGB16."""
  h, w = array.shape[:2]
  colour = 2 if array.ndim == 3 else 0
  header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
  rows = array.astype(">u2").reshape(h, -1).tobytes()
  stride = len(rows) // h
  raw = b"".join(b"\0" + rows[i * stride:(i + 1) * stride] for i in range(h))
  return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
          + _png_chunk(b"IEND", b""))


def write(folder, size=32, seed=0):
  """Writes the files into folder -> ({file name: expected uint8 (H, W, 3)}, bomb file name)."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  smooth = lambda h, w: np.clip(  # blocky pictures: JPEG keeps them close, nothing is symmetric
      np.kron(rng.integers(0, 256, (h // 8, w // 8, 3)), np.ones((8, 8, 1))), 0, 255).astype(np.uint8)
  expected = {}

  stored = smooth(size, size * 3 // 2)  # H x W = size x 1.5 size, stored sideways
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
  Image.fromarray(stored).save(folder / "exif6.jpg", "JPEG", quality=95, exif=exif.tobytes())
  decoded = np.asarray(Image.open(folder / "exif6.jpg"))  # the stored pixels, as JPEG kept them
  expected["exif6.jpg"] = np.rot90(decoded, k=-1)
  Image.fromarray(expected["exif6.jpg"]).save(folder / "upright.png")
  expected["upright.png"] = expected["exif6.jpg"]

  grey16 = rng.integers(0, 65536, (size, size), dtype=np.uint16)
  (folder / "grey16.png").write_bytes(_sixteen_bit_png(grey16))
  expected["grey16.png"] = np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, axis=-1)
  rgb16 = rng.integers(0, 65536, (size, size, 3), dtype=np.uint16)
  (folder / "rgb16.png").write_bytes(_sixteen_bit_png(rgb16))
  expected["rgb16.png"] = (rgb16 >> 8).astype(np.uint8)

  palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
  index = rng.integers(0, 256, (size, size), dtype=np.uint8)
  image = Image.fromarray(index, mode="P")
  image.putpalette(palette.tobytes())
  image.save(folder / "palette.gif")
  expected["palette.gif"] = palette[index]

  rgba = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
  Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
  expected["rgba.png"] = rgba[..., :3]
  grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
  Image.fromarray(grey, mode="L").save(folder / "grey.png")
  expected["grey.png"] = np.repeat(grey[..., None], 3, axis=-1)
  rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(folder / "lossless.webp", "WEBP", lossless=True)
  expected["lossless.webp"] = rgb

  Image.fromarray(smooth(size, size)).save(folder / "photo.jpg", "JPEG", quality=90)
  expected["photo.jpg"] = np.asarray(Image.open(folder / "photo.jpg").convert("RGB"))

  (folder / "bomb.png").write_bytes(bomb_png())
  return expected, "bomb.png"


def encoded(array, fmt="PNG"):
  """uint8 array -> encoded bytes."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()
