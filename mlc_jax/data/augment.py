"""Augmentation on the device: pure, jit-able, vectorised per example, deterministic given a key.

`augment(images, key, cfg)` takes a uint8 or float (B, H, W, 3) batch in 0-255 and returns float32
in 0-255. Each example gets its own key (jax.random.split) and, under vmap: a horizontal flip (dm-pix),
one bilinear resampling for zoom (random scale crop) and rotation together (without rotation, a
separable one: two small matmuls), colour jitter
(dm-pix) and Gaussian noise. Strengths come from config.augment; a zero strength removes the op from the
graph, so all-zero strengths are exactly the identity. Never called at evaluation.
"""
import dm_pix as pix
import jax
import jax.numpy as jnp


def _enabled(cfg):
  """Which ops are on, as plain Python values read at trace time."""
  return dict(flip=bool(cfg.flip), zoom=float(cfg.zoom), rotation=float(cfg.rotation),
              noise=float(cfg.noise), color_jitter=float(cfg.color_jitter))


def _warp(image, matrix, offset):
  """Bilinear pull resampling: output (y, x) reads input at matrix @ (y, x) + offset, edges clamped.

  Two-dimensional (all channels share the coordinates): four row gathers per image, several
  times faster than a 3-D affine_transform on CPU, where the demo trains.
  """
  h, w, c = image.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  sy = jnp.clip(matrix[0, 0] * ys + matrix[0, 1] * xs + offset[0], 0.0, h - 1.0)
  sx = jnp.clip(matrix[1, 0] * ys + matrix[1, 1] * xs + offset[1], 0.0, w - 1.0)
  y0, x0 = jnp.floor(sy), jnp.floor(sx)
  wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  flat = image.reshape(h * w, c)
  at = lambda y, x: jnp.take(flat, y * w + x, axis=0, mode="clip")
  top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
  bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
  return top * (1 - wy) + bottom * wy


def _interpolation_matrix(size, scale, offset):
  """(size, size) bilinear resampling along one axis: row i reads scale * i + offset, clamped."""
  source = jnp.clip(scale * jnp.arange(size, dtype=jnp.float32) + offset, 0.0, size - 1.0)
  lower = jnp.floor(source)
  weight = (source - lower)[:, None]
  lower = lower.astype(jnp.int32)
  upper = jnp.minimum(lower + 1, size - 1)
  return (1 - weight) * jax.nn.one_hot(lower, size) + weight * jax.nn.one_hot(upper, size)


def _warp_axes(image, scale, offset):
  """_warp for a diagonal matrix (no rotation): out[y, x] reads (scale[0] y + offset[0],
  scale[1] x + offset[1]). Separable, so two small matmuls instead of per-pixel gathers."""
  h, w, _ = image.shape
  rows = _interpolation_matrix(h, scale[0], offset[0])
  cols = _interpolation_matrix(w, scale[1], offset[1])
  return jnp.einsum("yh,hwc,xw->yxc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)


def _affine(key, image, zoom, rotation):
  """Random scale crop (side fraction in [1 - zoom, 1]) and rotation, one bilinear resampling."""
  k_scale, k_angle, k_shift = jax.random.split(key, 3)
  h, w = image.shape[0], image.shape[1]
  scale = jax.random.uniform(k_scale, (), minval=1.0 - zoom, maxval=1.0)
  angle = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-rotation, maxval=rotation))
  # The crop's centre moves at most as far as keeps the (unrotated) crop inside the image.
  shift = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * (1.0 - scale) / 2
  cy, cx = (h - 1) / 2, (w - 1) / 2
  cos, sin = scale * jnp.cos(angle), scale * jnp.sin(angle)
  offset = jnp.array([cy + shift[0] * h - (cos * cy - sin * cx),
                      cx + shift[1] * w - (sin * cy + cos * cx)])
  if rotation == 0:  # known at trace time: the map is diagonal
    return _warp_axes(image, jnp.stack([cos, cos]), offset)
  return _warp(image, jnp.array([[cos, -sin], [sin, cos]]), offset)


def _color(key, image, strength):
  """Brightness, contrast and saturation jitter on a 0-1 image."""
  k_b, k_c, k_s = jax.random.split(key, 3)
  image = pix.random_brightness(k_b, image, 0.4 * strength)
  image = pix.random_contrast(k_c, image, 1.0 - strength, 1.0 + strength)
  image = pix.random_saturation(k_s, jnp.clip(image, 0.0, 1.0), 1.0 - strength, 1.0 + strength)
  return jnp.clip(image, 0.0, 1.0)


def augment_one(image, key, cfg):
  """Augment one float32 (H, W, 3) 0-255 image with its own key."""
  on = _enabled(cfg)
  k_flip, k_affine, k_color, k_noise = jax.random.split(key, 4)
  if on["flip"]:
    image = pix.random_flip_left_right(k_flip, image)
  if on["zoom"] > 0 or on["rotation"] > 0:
    image = _affine(k_affine, image, on["zoom"], on["rotation"])
  if on["color_jitter"] > 0:
    image = _color(k_color, image / 255.0, on["color_jitter"]) * 255.0
  if on["noise"] > 0:
    image = image + on["noise"] * jax.random.normal(k_noise, image.shape, image.dtype)
  if any(on[k] for k in ("zoom", "rotation", "color_jitter", "noise")):
    image = jnp.clip(image, 0.0, 255.0)
  return image


def augment(images, key, cfg):
  """uint8/float (B, H, W, 3) 0-255 -> float32 (B, H, W, 3) 0-255, augmented per example.

  cfg: config.augment (flip, zoom, rotation, noise, color_jitter); read at trace time, so jit
  the caller (e.g. the training step) or use `make_augment(cfg)`.
  """
  images = jnp.asarray(images).astype(jnp.float32)
  if not any(_enabled(cfg).values()):
    return images
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda image, k: augment_one(image, k, cfg))(images, keys)


def make_augment(cfg):
  """jax.jit(augment) with these strengths fixed: f(images, key) -> float32 batch."""
  return jax.jit(lambda images, key: augment(images, key, cfg))
