"""Drawing the `shapes` images: numpy and Pillow only, so worker processes start fast.

See mlc_jax.data.datasets.shapes for the datasets; `render(seed, split, index, size)` (1-4 of
CLASSES, multi-label) and `render_single(...)` (one of SINGLE_CLASSES, single-label) depend on
nothing else.
"""
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from mlc_jax.data.splits import SPLITS

CLASSES = ("disc", "ring", "square", "rectangle_outline", "triangle", "star", "cross", "crescent")
# shapes_single, the demo's source task (as ImageNet is to COCO): the 8 above and 8 more, none of
# them another one rotated (the drawing rotates every shape).
SINGLE_CLASSES = CLASSES + ("ellipse", "pentagon", "hexagon", "arrow", "semicircle",
                            "triangle_outline", "square_outline", "t_shape")
_SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled so edges are anti-aliased


def _shape_mask(name, side, rng):
  """An 'L' mask (side x side, supersampled) with one shape centred, before rotation."""
  mask = Image.new("L", (side, side), 0)
  draw = ImageDraw.Draw(mask)
  c = side / 2
  r = side * 0.42
  stroke = max(2, int(side * 0.09))
  if name == "disc":
    draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
  elif name == "ring":
    draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    ri = r * rng.uniform(0.5, 0.65)
    draw.ellipse([c - ri, c - ri, c + ri, c + ri], fill=0)
  elif name == "square":
    h = r * 0.8
    draw.rectangle([c - h, c - h, c + h, c + h], fill=255)
  elif name == "rectangle_outline":
    w, h = r * 0.95, r * rng.uniform(0.45, 0.65)
    draw.rectangle([c - w, c - h, c + w, c + h], outline=255, width=stroke)
  elif name == "triangle":
    pts = [(c + r * math.cos(a), c + r * math.sin(a))
           for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    draw.polygon(pts, fill=255)
  elif name == "star":
    pts = []
    for i in range(10):
      rr = r if i % 2 == 0 else r * 0.42
      a = -math.pi / 2 + i * math.pi / 5
      pts.append((c + rr * math.cos(a), c + rr * math.sin(a)))
    draw.polygon(pts, fill=255)
  elif name == "cross":
    t = r * 0.3
    draw.rectangle([c - r, c - t, c + r, c + t], fill=255)
    draw.rectangle([c - t, c - r, c + t, c + r], fill=255)
  elif name == "crescent":
    draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    off = r * 0.55
    draw.ellipse([c - r + off, c - r - off * 0.2, c + r + off, c + r - off * 0.2], fill=0)
  elif name == "ellipse":
    draw.ellipse([c - r, c - r * 0.55, c + r, c + r * 0.55], fill=255)
  elif name in ("pentagon", "hexagon"):
    n = 5 if name == "pentagon" else 6
    draw.polygon([(c + r * math.cos(-math.pi / 2 + 2 * math.pi * i / n),
                   c + r * math.sin(-math.pi / 2 + 2 * math.pi * i / n)) for i in range(n)], fill=255)
  elif name == "arrow":
    t, head = r * 0.22, r * 0.2
    draw.polygon([(c - r, c - t), (c + head, c - t), (c + head, c - r * 0.6), (c + r, c),
                  (c + head, c + r * 0.6), (c + head, c + t), (c - r, c + t)], fill=255)
  elif name == "semicircle":
    draw.pieslice([c - r, c - r * 0.5, c + r, c + r * 1.5], 180, 360, fill=255)
  elif name == "triangle_outline":
    pts = [(c + r * math.cos(a), c + r * math.sin(a))
           for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    draw.polygon(pts, outline=255, width=stroke)
  elif name == "square_outline":
    h = r * 0.8
    draw.rectangle([c - h, c - h, c + h, c + h], outline=255, width=stroke)
  elif name == "t_shape":
    t = r * 0.28
    draw.rectangle([c - r, c - r, c + r, c - r + 2 * t], fill=255)
    draw.rectangle([c - t, c - r, c + t, c + r], fill=255)
  else:
    raise ValueError(name)
  return mask


def _background(size, rng):
  """A cluttered background: a colour gradient, faint lines, small blobs and pixel noise."""
  base = rng.uniform(40, 215, size=(2, 3))
  angle = rng.uniform(0, 2 * np.pi)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
  ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
  pixels = base[0] * (1 - ramp) + base[1] * ramp
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(1, 4)):  # thin lines: clutter that is never a shape
    xy = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
    draw.line(xy, fill=tuple(int(v) for v in rng.uniform(0, 255, 3)), width=1)
  for _ in range(rng.integers(1, 5)):  # small blobs, well under the smallest shape
    x, y = rng.uniform(0, size, 2)
    s = rng.uniform(0.015, 0.035) * size
    draw.ellipse([x - s, y - s, x + s, y + s], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
  noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (size, size, 3))
  return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _visible_colour(pixels, cx, cy, radius, rng, min_distance=90.0):
  """A random colour at least min_distance (RGB) from the background it lands on.

  Any hue can go with any class; only near-invisible shapes are ruled out.
  """
  h, w = pixels.shape[:2]
  y0, y1 = int(max(0, cy - radius)), int(min(h, cy + radius + 1))
  x0, x1 = int(max(0, cx - radius)), int(min(w, cx + radius + 1))
  under = pixels[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
  colour = rng.uniform(0, 255, 3)
  for _ in range(30):
    if np.linalg.norm(colour - under) >= min_distance:
      break
    colour = rng.uniform(0, 255, 3)
  return tuple(int(v) for v in colour)


def render(seed, split, index, size=64):
  """Draw image `index` of `split` -> (uint8 (size, size, 3) array, sorted list of class ids).

  Depends only on (seed, split, index, size), so the same seed gives the same pixels anywhere.
  """
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  image = _background(size, rng)
  count = int(rng.integers(1, 5))
  classes = rng.choice(len(CLASSES), size=count, replace=False)
  placed = []
  for cls in classes:
    _draw(image, CLASSES[cls], placed, size, rng)
  return np.asarray(image, np.uint8), sorted(int(c) for c in classes)


def render_single(seed, split, index, size=64):
  """Image `index` of `split` of shapes_single -> (uint8 (size, size, 3), [class id]).

  One shape of SINGLE_CLASSES, drawn as `render` draws each of its shapes (same clutter, colours,
  sizes, rotation), from its own random stream: shapes_single and shapes never share an image.
  """
  rng = np.random.default_rng([seed, SPLITS.index(split), index, len(SINGLE_CLASSES)])
  image = _background(size, rng)
  cls = int(rng.integers(len(SINGLE_CLASSES)))
  _draw(image, SINGLE_CLASSES[cls], [], size, rng)
  return np.asarray(image, np.uint8), [cls]


def _draw(image, name, placed, size, rng):
  """Pastes one shape onto image (in place) away from the `placed` ones; appends its circle."""
  radius = rng.uniform(0.16, 0.25) * size
  for _ in range(20):  # overlap allowed, but not so much that a shape disappears
    cx, cy = rng.uniform(radius * 0.8, size - radius * 0.8, 2)
    if all(math.hypot(cx - x, cy - y) > 0.9 * (radius + r) for x, y, r in placed):
      break
  placed.append((cx, cy, radius))
  side = int(round(2 * radius)) * _SUPERSAMPLE
  mask = _shape_mask(name, side, rng)
  mask = mask.rotate(rng.uniform(0, 360), resample=Image.BICUBIC)
  mask = mask.resize((side // _SUPERSAMPLE,) * 2, Image.LANCZOS)
  colour = _visible_colour(np.asarray(image, np.float32), cx, cy, radius, rng)
  box = (int(round(cx - side / _SUPERSAMPLE / 2)), int(round(cy - side / _SUPERSAMPLE / 2)))
  image.paste(colour, box + (box[0] + mask.size[0], box[1] + mask.size[1]), mask)


def encode_png(array):
  """uint8 (H, W, 3) -> PNG bytes (Pillow's encoder is deterministic)."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def render_example(args):
  """(seed, split, index, size[, single]) -> (key, TFDS example): one stored example, as PNG."""
  seed, split, index, size, *single = args
  array, labels = (render_single if single and single[0] else render)(seed, split, index, size)
  return f"{split}_{index:06d}", {"image": encode_png(array),
                                  "image/filename": f"{split}/{index:06d}.png", "labels": labels}
