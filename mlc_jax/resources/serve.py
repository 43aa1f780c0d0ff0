"""Run a model exported by `python launch.py --mode=export` with jax, numpy and PIL only.

mlc_jax copies this file into every export folder as serve.py; it never imports mlc_jax.

  python serve.py [--k=3] IMAGE [IMAGE ...]          # from inside the export folder

  import serve
  model = serve.load("EXPORT_DIR")
  model.predict(images)   # paths, PIL images or uint8 (N, H, W, 3) -> float32 (N, C) probabilities
  model.top_k(images, k=3)
"""
import argparse
import json
import math
import pathlib
import sys

import jax
import numpy as np
from PIL import Image


def resize(image, image_size, method="plain"):
  """PIL image -> uint8 (image_size, image_size, 3), as preprocessing.json's resize says.

  An image already image_size square passes unchanged; otherwise PIL's antialiased bilinear
  filter stands in for TensorFlow's, so a few pixels may differ by a rounding step.
  """
  image = image.convert("RGB")
  if image.size == (image_size, image_size):
    return np.asarray(image, dtype=np.uint8)
  if method == "crop":  # scale the short side to image_size, then the central square
    w, h = image.size
    scale = image_size / min(w, h)
    nw, nh = math.ceil(w * scale), math.ceil(h * scale)
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
  else:
    image = image.resize((image_size, image_size), Image.BILINEAR)
  return np.asarray(image, dtype=np.uint8)


def _to_pil(item):
  if isinstance(item, Image.Image):
    return item
  if isinstance(item, (str, pathlib.Path)):
    return Image.open(item)
  array = np.asarray(item)
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return Image.fromarray(np.asarray(array[..., :3], dtype=np.uint8))


class ExportedModel:
  """The exported inference function with its labels and preprocessing spec."""

  def __init__(self, export_dir):
    export_dir = pathlib.Path(export_dir)
    self.spec = json.loads((export_dir / "preprocessing.json").read_text())
    self.labels = (export_dir / "labels.txt").read_text().splitlines()
    self.image_size = int(self.spec["image_size"])
    self.resize_method = self.spec["resize"]
    self.function = jax.export.deserialize(bytearray((export_dir / "inference.jax").read_bytes()))
    with np.load(export_dir / "params.npz") as params:
      self.params = {name: jax.device_put(params[name]) for name in params.files}
    self._call = jax.jit(self.function.call)

  def preprocess(self, images):
    """Paths, PIL images, a list of arrays or a uint8 (N, H, W, 3) array -> uint8 (N, S, S, 3)."""
    if isinstance(images, (str, pathlib.Path, Image.Image)):
      images = [images]
    s = self.image_size
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (s, s, 3):
      return np.asarray(images, dtype=np.uint8)
    return np.stack([resize(_to_pil(item), s, self.resize_method) for item in images])

  def predict(self, images, batch_size=32):
    """-> float32 (N, C) probabilities, in labels order."""
    images = self.preprocess(images)
    out = [np.asarray(self._call(self.params, images[i:i + batch_size]))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32)

  def top_k(self, images, k=3):
    """-> per image a list of (label, probability), highest first."""
    scores = self.predict(images)
    return [[(self.labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:k]]
            for row in scores]


def load(export_dir):
  """An export folder -> ExportedModel."""
  return ExportedModel(export_dir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("images", nargs="+", help="image files")
  parser.add_argument("--k", type=int, default=3, help="labels printed per image")
  parser.add_argument("--export_dir", default=str(pathlib.Path(__file__).resolve().parent))
  args = parser.parse_args()
  model = load(args.export_dir)
  paths, images = [], []
  for path in args.images:
    try:
      images.append(resize(Image.open(path), model.image_size, model.resize_method))
      paths.append(path)
    except OSError as e:  # unreadable: report it, predict the rest
      print(f"skipped {path}: {e}", file=sys.stderr)
  if not images:
    sys.exit("error: none of the images could be read")
  for path, top in zip(paths, model.top_k(np.stack(images), k=args.k)):
    print(path + "  " + "  ".join(f"{label} {p:.3f}" for label, p in top))


if __name__ == "__main__":
  main()
