"""Run a model exported by `python launch.py --mode=export` with numpy, PIL and jax or onnxruntime.

mlc_jax copies this file into every export folder as serve.py; it never imports mlc_jax. The
folder's model is inference.jax + params.npz (--format=stablehlo: run by jax) or model.onnx
(--format=onnx: run by onnxruntime, and then neither jax nor TensorFlow is needed); each runtime
is imported only when its model is loaded.

  python serve.py [--k=3] IMAGE [IMAGE ...]          # from inside the export folder

  import serve
  model = serve.load("EXPORT_DIR")
  model.predict(images)   # paths, PIL images or uint8 (N, H, W, 3) -> float32 (N, C) probabilities
  model.top_k(images, k=3)

Before anything is loaded, `check` holds the folder against its manifest.json (written last by the
export): every file's size and sha256, the labels count against the model's output width, and no
model file of another export. A folder that fails is refused with one line naming the file
(ExportError); `python serve.py` prints it as `error: ...` and exits 1.
"""
import argparse
import hashlib
import io
import json
import math
import pathlib
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 90_000_000
MANIFEST = "manifest.json"
MANIFEST_KIND = "mlc_jax export"
MODEL_FILES = {"stablehlo": ("inference.jax", "params.npz"), "onnx": ("model.onnx",)}


class ExportError(ValueError):
  """An export folder that does not match its manifest.json: the message names the file and the fix."""


def sha256(path):
  """Hex sha256 of a file, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def check(export_dir):
  """Holds export_dir against its manifest.json -> the manifest; ExportError (one line) otherwise."""
  export_dir = pathlib.Path(export_dir)
  path = export_dir / MANIFEST
  again = "export the model again (into an empty or new --output folder)"
  if not path.is_file():
    raise ExportError(f"{path} is missing: {export_dir} is not a complete mlc_jax export (an "
                      f"interrupted or older export); {again}")
  try:
    manifest = json.loads(path.read_text())
    files, fmt = dict(manifest["files"]), manifest["model_format"]
    if manifest.get("kind") != MANIFEST_KIND or fmt not in MODEL_FILES:
      raise ValueError(f"kind {manifest.get('kind')!r}, model_format {fmt!r}")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ExportError(f"{path} is damaged ({type(e).__name__}: {e}); {again}") from None
  for name, want in sorted(files.items()):
    f = export_dir / name
    if not f.is_file():
      raise ExportError(f"{f} is missing (listed in {MANIFEST}); {again}")
    size = f.stat().st_size
    if size != want.get("bytes"):
      raise ExportError(f"{f} is {size} bytes but the export wrote {want.get('bytes')} (truncated "
                        f"or replaced); {again}")
    if sha256(f) != want.get("sha256"):
      raise ExportError(f"{f} is not the file the export wrote (its sha256 differs from "
                        f"{MANIFEST}: edited or swapped); {again}")
  stray = [n for names in MODEL_FILES.values() for n in names
           if n not in files and (export_dir / n).exists()]
  if stray:
    raise ExportError(f"{export_dir / stray[0]} is not part of this {fmt} export (left by another "
                      f"export?); remove it, or {again}")
  labels = (export_dir / "labels.txt").read_text().splitlines() if "labels.txt" in files else []
  if not (len(labels) == manifest.get("labels") == manifest.get("output_width")):
    raise ExportError(f"{export_dir / 'labels.txt'} has {len(labels)} labels but the model has "
                      f"{manifest.get('output_width')} outputs; {again}")
  return manifest
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image, exif=True, max_pixels=DEFAULT_MAX_PIXELS):
  """PIL image -> uint8 (H, W, 3) by mlc_jax.data.reader's rules (the tests hold the two equal).

  Over max_pixels (checked before decoding) -> ValueError 'too large'; EXIF orientation applied
  when exif; 16-bit keeps the high byte; palette -> its colours; grey replicated; alpha dropped.
  """
  w, h = image.size
  if max_pixels and w * h > max_pixels:
    raise ValueError(f"too large ({w} x {h} = {w * h / 1e6:.1f} megapixels, over "
                     f"max_pixels={max_pixels:,} of preprocessing.json)")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    image.load()
  if exif:
    image = ImageOps.exif_transpose(image)
  mode = image.mode
  if mode in _SIXTEEN_BIT:
    grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in ("P", "PA"):
    image, mode = image.convert("RGBA"), "RGBA"
  if mode == "1":
    image, mode = image.convert("L"), "L"
  if mode in ("L", "LA", "La"):
    grey = np.asarray(image, dtype=np.uint8)
    grey = grey[..., 0] if grey.ndim == 3 else grey
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read(path, exif=True, max_pixels=DEFAULT_MAX_PIXELS):
  """An image file -> uint8 (H, W, 3); ValueError naming why when it cannot be read."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(pathlib.Path(path).read_bytes()))
  except Image.DecompressionBombError as e:
    raise ValueError(f"too large for Pillow ({e})") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None
  try:
    return to_rgb(image, exif, max_pixels)
  except (OSError, SyntaxError, EOFError) as e:
    raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None


def resize(image, image_size, method="plain"):
  """uint8 (H, W, 3) -> uint8 (image_size, image_size, 3), as preprocessing.json's resize says.

  An antialiased linear resize in numpy (the scale-and-translate weights tf.image.resize and
  jax.image.resize use) stands in for tf.image.resize: an image already image_size square passes
  unchanged; otherwise a pixel may differ by one level where the two round a value near .5
  differently (about 0.1% of pixels).
  """
  image = np.asarray(image, dtype=np.uint8)
  h, w = image.shape[:2]
  if (h, w) == (image_size, image_size):
    return image
  if method == "crop":  # scale the short side to image_size, then the central square
    scale = np.float32(image_size) / np.float32(min(h, w))
    nh, nw = (math.ceil(np.float32(h) * scale), math.ceil(np.float32(w) * scale))
  else:
    nh, nw = image_size, image_size
  out = np.einsum("hH,wW,HWc->hwc", _weights(h, nh), _weights(w, nw), image.astype(np.float32),
                  optimize=True)
  top, left = (nh - image_size) // 2, (nw - image_size) // 2
  out = out[top:top + image_size, left:left + image_size]
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _weights(n_in, n_out):
  """(n_out, n_in) float32 weights of an antialiased linear (triangle) resize along one axis:
  the kernel widened by the downscale factor, each row normalised."""
  scale = np.float32(n_out) / np.float32(n_in)
  inv = np.float32(1) / scale
  kernel_scale = max(inv, np.float32(1))
  sample = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * inv - np.float32(0.5)
  x = np.abs(sample[:, None] - np.arange(n_in, dtype=np.float32)[None, :]) / kernel_scale
  weights = np.maximum(np.float32(0), np.float32(1) - x)
  total = weights.sum(axis=1, keepdims=True)
  weights = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps,
                     weights / np.where(total != 0, total, 1), 0)
  inside = (sample >= -0.5) & (sample <= n_in - 0.5)
  return np.where(inside[:, None], weights, 0).astype(np.float32)


def _to_array(item, exif, max_pixels):
  if isinstance(item, Image.Image):
    return to_rgb(item, exif, max_pixels)
  if isinstance(item, (str, pathlib.Path)):
    try:
      return read(item, exif, max_pixels)
    except ValueError as e:
      raise ValueError(f"image {item}: {e}") from None
  array = np.asarray(item)
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return np.asarray(array[..., :3], dtype=np.uint8)


class _Jax:
  """inference.jax + params.npz, run by jax."""

  def __init__(self, export_dir):
    import jax  # noqa: PLC0415 - only this format needs it
    self.function = jax.export.deserialize(bytearray((export_dir / "inference.jax").read_bytes()))
    with np.load(export_dir / "params.npz") as params:
      self.params = {name: jax.device_put(params[name]) for name in params.files}
    self._call = jax.jit(self.function.call)

  def __call__(self, images):
    return np.asarray(self._call(self.params, images))


class _Onnx:
  """model.onnx, run by onnxruntime (on its CPU provider unless another is installed)."""

  def __init__(self, export_dir):
    import onnxruntime  # noqa: PLC0415 - only this format needs it
    self.session = onnxruntime.InferenceSession(str(export_dir / "model.onnx"),
                                                providers=onnxruntime.get_available_providers())

  def __call__(self, images):
    return self.session.run(None, {"images": images})[0]


class ExportedModel:
  """The exported model (StableHLO or ONNX) with its labels and preprocessing spec."""

  def __init__(self, export_dir):
    export_dir = pathlib.Path(export_dir)
    self.manifest = check(export_dir)
    self.spec = json.loads((export_dir / "preprocessing.json").read_text())
    self.labels = (export_dir / "labels.txt").read_text().splitlines()
    self.image_size = int(self.spec["image_size"])
    self.resize_method = self.spec["resize"]
    self.exif = bool(self.spec.get("exif_orientation", True))
    self.max_pixels = int(self.spec.get("max_pixels", DEFAULT_MAX_PIXELS))
    runtime = _Onnx if self.manifest["model_format"] == "onnx" else _Jax
    try:
      self.run = runtime(export_dir)
    except ImportError as e:
      raise ExportError(f"{export_dir} holds a {self.manifest['model_format']} model, which needs "
                        f"{e.name or e}: install it") from None
    # StableHLO: the function and its weights, as README.md calls them without this file
    self.function = getattr(self.run, "function", None)
    self.params = getattr(self.run, "params", None)

  def preprocess(self, images):
    """Paths, PIL images, a list of arrays or a uint8 (N, H, W, 3) array -> uint8 (N, S, S, 3)."""
    if isinstance(images, (str, pathlib.Path, Image.Image)):
      images = [images]
    s = self.image_size
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (s, s, 3):
      return np.asarray(images, dtype=np.uint8)
    return np.stack([self.load(item) for item in images])

  def load(self, item):
    """One path, PIL image or array -> uint8 (S, S, 3); ValueError naming a file it cannot read."""
    return resize(_to_array(item, self.exif, self.max_pixels), self.image_size, self.resize_method)

  def predict(self, images, batch_size=32):
    """-> float32 (N, C) probabilities, in labels order."""
    images = self.preprocess(images)
    out = [self.run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32)

  def top_k(self, images, k=3):
    """-> per image a list of (label, probability), highest first."""
    scores = self.predict(images)
    return [[(self.labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:k]]
            for row in scores]


def load(export_dir):
  """An export folder -> ExportedModel (ExportError, one line, when it fails its manifest)."""
  return ExportedModel(export_dir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("images", nargs="+", help="image files")
  parser.add_argument("--k", type=int, default=3, help="labels printed per image")
  parser.add_argument("--export_dir", default=str(pathlib.Path(__file__).resolve().parent))
  args = parser.parse_args()
  try:
    model = load(args.export_dir)
  except ExportError as e:
    sys.exit(f"error: {e}")
  paths, images = [], []
  for path in args.images:
    try:
      images.append(model.load(path))  # one at a time: memory bounded by the largest image
      paths.append(path)
    except ValueError as e:  # unreadable or too large: report it, predict the rest
      print(f"skipped {e}", file=sys.stderr)
  if not images:
    sys.exit("error: none of the images could be read")
  for path, top in zip(paths, model.top_k(np.stack(images), k=args.k)):
    print(path + "  " + "  ".join(f"{label} {p:.3f}" for label, p in top))


if __name__ == "__main__":
  main()
