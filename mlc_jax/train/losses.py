"""Multi-label losses: pure (logits, labels, mask) -> scalar functions.

Every loss is the mean over classes and over the valid (mask=True) images, as Keras'
binary_crossentropy averages, so learning rates carry over between losses. Labels are multi-hot
float (N, C); logits are float (N, C) before the sigmoid.
"""
import functools

import jax
import jax.numpy as jnp

from mlc_jax.config import CHOICES
from mlc_jax.errors import UserError

NAMES = CHOICES["loss.name"]
_EPS = 1e-8  # floor inside log() for the clipped ASL negatives (as the ASL reference code)


def smooth(labels, label_smoothing):
  """Keras' binary label smoothing: y * (1 - s) + s / 2."""
  return labels * (1.0 - label_smoothing) + 0.5 * label_smoothing


def _focus(x, gamma):
  # x**0 has a NaN gradient at x == 0 (saturated sigmoid); gamma 0 means no weighting at all.
  return 1.0 if gamma == 0 else x ** gamma


def _masked_mean(per_label, mask):
  per_image = jnp.mean(per_label, axis=-1)
  if mask is None:
    return jnp.mean(per_image)
  mask = mask.astype(per_image.dtype)
  return jnp.sum(per_image * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def bce(logits, labels, mask=None, *, label_smoothing=0.0):
  """Binary cross-entropy with logits (numerically stable log-sigmoid form)."""
  logits = logits.astype(jnp.float32)
  y = smooth(labels.astype(jnp.float32), label_smoothing)
  per_label = -(y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
  return _masked_mean(per_label, mask)


def focal(logits, labels, mask=None, *, gamma=2.0, label_smoothing=0.0):
  """Focal loss (Lin et al. 2017) without alpha: BCE terms weighted by (1-p_t)^gamma."""
  logits = logits.astype(jnp.float32)
  y = smooth(labels.astype(jnp.float32), label_smoothing)
  p = jax.nn.sigmoid(logits)
  pos = y * _focus(1.0 - p, gamma) * jax.nn.log_sigmoid(logits)
  neg = (1.0 - y) * _focus(p, gamma) * jax.nn.log_sigmoid(-logits)
  return _masked_mean(-(pos + neg), mask)


def asl(logits, labels, mask=None, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05,
        label_smoothing=0.0):
  """Asymmetric loss (Ridnik et al. 2021): focusing gamma_pos/gamma_neg, negatives shifted by clip.

  Negatives use p_m = max(p - clip, 0), so easy negatives (p < clip) cost nothing.
  """
  logits = logits.astype(jnp.float32)
  y = smooth(labels.astype(jnp.float32), label_smoothing)
  p = jax.nn.sigmoid(logits)
  p_m = jnp.maximum(p - clip, 0.0) if clip > 0 else p
  log_pos = jax.nn.log_sigmoid(logits)
  log_neg = jnp.log(jnp.maximum(1.0 - p_m, _EPS)) if clip > 0 else jax.nn.log_sigmoid(-logits)
  pos = y * _focus(1.0 - p, gamma_pos) * log_pos
  neg = (1.0 - y) * _focus(p_m, gamma_neg) * log_neg
  return _masked_mean(-(pos + neg), mask)


def softmax_cross_entropy(logits, labels, mask=None):
  """Categorical cross-entropy against the labels normalised to sum 1 (the softmax head)."""
  logits = logits.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  y = y / jnp.maximum(jnp.sum(y, axis=-1, keepdims=True), 1.0)
  per_image = -jnp.sum(y * jax.nn.log_softmax(logits, axis=-1), axis=-1, keepdims=True)
  return _masked_mean(per_image, mask)


def from_config(loss_config):
  """config.loss -> fn(logits, labels, mask=None) -> scalar (UserError on an unknown name)."""
  name, ls = loss_config.name, float(loss_config.label_smoothing)
  if not 0.0 <= ls < 1.0:
    raise UserError(f"loss.label_smoothing={ls} must be in [0, 1)")
  if name == "bce":
    return functools.partial(bce, label_smoothing=ls)
  if name == "focal":
    return functools.partial(focal, gamma=float(loss_config.focal_gamma), label_smoothing=ls)
  if name == "asl":
    if not 0.0 <= loss_config.clip < 1.0:
      raise UserError(f"loss.clip={loss_config.clip} must be in [0, 1)")
    return functools.partial(asl, gamma_pos=float(loss_config.gamma_pos),
                             gamma_neg=float(loss_config.gamma_neg),
                             clip=float(loss_config.clip), label_smoothing=ls)
  raise UserError(f"loss.name={name!r} is not one of {NAMES}")


def for_config(config):
  """The training loss of a whole config: config.loss for a sigmoid head, softmax cross-entropy
  for a softmax head (head.activation)."""
  if config.head.activation == "softmax":
    return softmax_cross_entropy
  return from_config(config.loss)
