"""Properties of the on-device augmentation (mlc_jax.data.augment)."""
import jax
import ml_collections
import numpy as np
import pytest

from mlc_jax.data import augment


def _cfg(flip=False, zoom=0.0, rotation=0.0, noise=0.0, color_jitter=0.0):
  return ml_collections.ConfigDict(dict(flip=flip, zoom=zoom, rotation=rotation, noise=noise,
                                        color_jitter=color_jitter))


def _images(n=6, size=16):
  return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_zero_strength_is_identity():
  images = _images()
  out = augment.make_augment(_cfg())(images, jax.random.key(0))
  assert out.dtype == np.float32 and out.shape == images.shape
  np.testing.assert_array_equal(np.asarray(out), images.astype(np.float32))


def test_flip_twice_is_identity_and_flips_some():
  images = _images(8)
  f = augment.make_augment(_cfg(flip=True))
  key = jax.random.key(3)
  once = np.asarray(f(images, key))
  np.testing.assert_array_equal(np.asarray(f(once, key)), images.astype(np.float32))
  flipped = [np.array_equal(once[i], images[i, :, ::-1]) for i in range(8)]
  kept = [np.array_equal(once[i], images[i]) for i in range(8)]
  assert all(a or b for a, b in zip(flipped, kept)) and any(flipped) and any(kept)


def test_all_ops_keep_shape_dtype_range_and_are_deterministic():
  images = _images()
  f = augment.make_augment(_cfg(flip=True, zoom=0.3, rotation=15.0, noise=8.0, color_jitter=0.4))
  a = np.asarray(f(images, jax.random.key(1)))
  b = np.asarray(f(images, jax.random.key(1)))
  c = np.asarray(f(images, jax.random.key(2)))
  assert a.shape == images.shape and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 255.0
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # Each example has its own draw: identical inputs give different outputs within one batch.
  same = np.repeat(images[:1], 6, axis=0)
  d = np.asarray(f(same, jax.random.key(1)))
  assert not np.allclose(d[0], d[1])


def test_labels_untouched_and_constant_image_kept_inside_a_jitted_step():
  cfg = _cfg(flip=True, zoom=0.5, rotation=30.0)

  @jax.jit
  def step(batch, key):
    return {**batch, "image": augment.augment(batch["image"], key, cfg)}

  labels = np.eye(6, 5, dtype=np.float32)
  # A constant image stays constant under any flip, scale crop or rotation (edge mode 'nearest').
  const = np.full((6, 16, 16, 3), 77, np.uint8)
  out = step({"image": const, "labels": labels}, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out["labels"]), labels)
  np.testing.assert_allclose(np.asarray(out["image"]), 77.0, atol=1e-3)


def test_full_crop_at_zero_angle_is_identity():
  # Hand reference: scale 1 (zoom 0), no shift and zero angle map every pixel onto itself.
  image = _images(1)[0].astype(np.float32)
  out = jax.jit(lambda x: augment._affine(jax.random.key(0), x, 0.0, 0.0))(image)
  np.testing.assert_allclose(np.asarray(out), image, atol=1e-3)


def test_warp_matches_scipy_bilinear_with_nearest_edges():
  from scipy import ndimage
  image = _images(1, 20)[0].astype(np.float32)
  angle, scale = np.deg2rad(17.0), 0.8
  matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
  offset = np.array([3.5, -2.25], np.float32)
  got = np.asarray(jax.jit(augment._warp)(image, matrix, offset))
  expected = np.stack([ndimage.affine_transform(image[..., ch], matrix, offset, order=1, mode="nearest")
                       for ch in range(3)], -1)
  np.testing.assert_allclose(got, expected, atol=1e-3)


def test_separable_warp_matches_scipy_and_the_general_warp():
  # Zoom without rotation takes the separable path; it must give the general warp's pixels.
  from scipy import ndimage
  image = _images(1, 20)[0].astype(np.float32)
  scale, offset = np.array([0.8, 0.7], np.float32), np.array([3.5, -2.25], np.float32)
  got = np.asarray(jax.jit(augment._warp_axes)(image, scale, offset))
  matrix = np.diag(scale)
  expected = np.stack([ndimage.affine_transform(image[..., ch], matrix, offset, order=1, mode="nearest")
                       for ch in range(3)], -1)
  np.testing.assert_allclose(got, expected, atol=1e-3)
  np.testing.assert_allclose(got, np.asarray(jax.jit(augment._warp)(image, matrix, offset)), atol=1e-3)


def test_zoom_scale_is_drawn_from_one_minus_zoom_to_one():
  # A ramp (value = column index * 4) sampled at out[x] = in[scale * x + offset]: the slope of
  # the output along a row, over the centre columns (away from clamped edges), is 4 * scale.
  size, zoom, n = 64, 0.3, 200
  ramp = np.broadcast_to((np.arange(size, dtype=np.float32) * 4)[None, :, None], (size, size, 3))
  images = np.broadcast_to(ramp, (n, size, size, 3)).astype(np.float32)
  out = np.asarray(augment.make_augment(_cfg(zoom=zoom))(images, jax.random.key(5)))
  centre = out[:, size // 2, 16:48, 0]
  scale = np.polyfit(np.arange(32), centre.T, 1)[0] / 4
  assert scale.min() >= 1 - zoom - 1e-3 and scale.max() <= 1 + 1e-3
  # ... and covers that range: zooming in by up to `zoom`, never out.
  assert scale.min() < 1 - 0.9 * zoom and scale.max() > 1 - 0.1 * zoom


def test_rotation_angle_is_drawn_from_minus_to_plus_the_limit():
  """augment.rotation = 20: a ramp rotated by theta reads a*(sin(theta) y + cos(theta) x) near
  the centre (bilinear sampling of a linear image is exact), so a least-squares plane fit of each
  output gives its angle. Over many draws both signs appear, none beyond 20 degrees."""
  size, n, limit = 32, 200, 20.0
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
  ramp = 128 + 3 * (xs - (size - 1) / 2)
  images = np.broadcast_to(ramp[None, :, :, None], (n, size, size, 3)).astype(np.float32)
  out = np.asarray(augment.make_augment(_cfg(rotation=limit))(images, jax.random.key(7)))
  window = slice(10, 22)  # within radius ~8 of the centre: no clamped edge for any angle <= 20
  design = np.stack([ys[window, window].ravel(), xs[window, window].ravel(),
                     np.ones(144)], 1)
  coef = np.linalg.lstsq(design, out[:, window, window, 0].reshape(n, -1).T, rcond=None)[0]
  angles = np.degrees(np.arctan2(coef[0], coef[1]))
  np.testing.assert_allclose(np.hypot(coef[0], coef[1]), 3.0, rtol=1e-3)  # no zoom: slope kept
  assert np.abs(angles).max() <= limit + 1e-2
  assert angles.min() < -0.8 * limit and angles.max() > 0.8 * limit  # both ways, to the limit
  assert np.mean(angles < 0) == pytest.approx(0.5, abs=0.15)


def test_noise_std_is_in_pixel_units():
  """augment.noise = 12: a mid-grey image (128, far from the clip at 0 and 255) gains Gaussian
  noise of std 12 pixel units and mean 0 (numpy's std over 24 x 16 x 16 x 3 draws)."""
  images = np.full((24, 16, 16, 3), 128, np.uint8)
  out = np.asarray(augment.make_augment(_cfg(noise=12.0))(images, jax.random.key(2))) - 128
  assert out.std() == pytest.approx(12.0, rel=0.03) and abs(out.mean()) < 0.3


def test_color_jitter_shifts_grey_by_brightness_within_its_strength():
  """augment.color_jitter = 0.5 on uniform grey images: contrast and saturation leave a uniform
  grey image as it is, so each output is grey shifted by brightness, drawn from
  +-0.4 * 0.5 * 255 = +-51 pixel units (dm-pix's random_brightness delta): both signs, never
  beyond."""
  images = np.full((64, 8, 8, 3), 128, np.uint8)
  out = np.asarray(augment.make_augment(_cfg(color_jitter=0.5))(images, jax.random.key(4)))
  shift = out[:, 0, 0, 0] - 128
  np.testing.assert_allclose(out, np.broadcast_to(shift[:, None, None, None] + 128, out.shape),
                             atol=1e-3)  # still uniform
  assert np.abs(shift).max() <= 51 + 1e-3
  assert shift.min() < -35 and shift.max() > 35
