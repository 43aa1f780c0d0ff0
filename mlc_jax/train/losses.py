"""Multi-label losses: pure (logits, labels, mask) -> scalar functions.

Labels are (N, C) with entries 1 (present), 0 (absent) or -1 (unknown: a VOC "difficult" object, a
class another dataset annotates, a partial annotation); they may arrive as int8, bool or float.
Logits are float (N, C) before the sigmoid; mask (N,) is False on padded rows (None: all valid).

Every sigmoid loss is the per-entry loss summed over the KNOWN entries (label != -1) of the valid
rows, divided by the count of those entries (at least 1, so an all-unknown batch gives 0, not NaN).
Without unknown entries that is the mean over classes and over the valid images, as Keras'
binary_crossentropy averages, so learning rates carry over between losses. Unknown entries
and padded rows contribute neither value nor gradient (their logits are swapped for 0 before any
arithmetic, so a saturated or garbage logit there cannot leak a NaN through 0 * inf), and label
smoothing applies to known entries only.
"""
import functools

import jax
import jax.numpy as jnp

_EPS = 1e-8  # floor inside log() for the clipped ASL negatives (as the ASL reference code)


def smooth(labels, label_smoothing):
  """Keras' binary label smoothing: y * (1 - s) + s / 2."""
  return labels * (1.0 - label_smoothing) + 0.5 * label_smoothing


def _focus(x, gamma):
  # x**0 has a NaN gradient at x == 0 (saturated sigmoid); gamma 0 means no weighting at all.
  return 1.0 if gamma == 0 else x ** gamma


def _known(logits, labels, mask):
  """(float32 logits, float32 labels, weight): weight is True on known entries of valid rows.

  Known means label != -1; valid means mask True (mask None: every row). Logits and labels are set
  to 0 where weight is False (the "double where"), so those entries' gradient is exactly 0 and
  finite whatever the per-entry formula or the garbage a padded row holds.
  """
  y = jnp.asarray(labels).astype(jnp.float32)
  weight = y != -1.0
  if mask is not None:
    weight = weight & jnp.asarray(mask).astype(bool)[..., None]
  logits = jnp.where(weight, jnp.asarray(logits).astype(jnp.float32), 0.0)
  return logits, jnp.where(weight, y, 0.0), weight


def _weighted_mean(values, weight):
  """Sum of values where weight is True / the count of those (at least 1, so never 0/0)."""
  weight = weight.astype(jnp.float32)
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def bce(logits, labels, mask=None, *, label_smoothing=0.0):
  """Binary cross-entropy with logits (numerically stable log-sigmoid form), known entries only."""
  logits, y, known = _known(logits, labels, mask)
  y = smooth(y, label_smoothing)
  per_label = -(y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
  return _weighted_mean(per_label, known)


def focal(logits, labels, mask=None, *, gamma=2.0, label_smoothing=0.0):
  """Focal loss (Lin et al. 2017) without alpha: BCE terms weighted by (1-p_t)^gamma, known
  entries only."""
  logits, y, known = _known(logits, labels, mask)
  y = smooth(y, label_smoothing)
  p = jax.nn.sigmoid(logits)
  pos = y * _focus(1.0 - p, gamma) * jax.nn.log_sigmoid(logits)
  neg = (1.0 - y) * _focus(p, gamma) * jax.nn.log_sigmoid(-logits)
  return _weighted_mean(-(pos + neg), known)


def asl(logits, labels, mask=None, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05,
        label_smoothing=0.0):
  """Asymmetric loss (Ridnik et al. 2021): focusing gamma_pos/gamma_neg, negatives shifted by clip.

  Negatives use p_m = max(p - clip, 0), so easy negatives (p < clip) cost nothing. Known entries
  only, as every loss here.
  """
  logits, y, known = _known(logits, labels, mask)
  y = smooth(y, label_smoothing)
  p = jax.nn.sigmoid(logits)
  p_m = jnp.maximum(p - clip, 0.0) if clip > 0 else p
  log_pos = jax.nn.log_sigmoid(logits)
  log_neg = jnp.log(jnp.maximum(1.0 - p_m, _EPS)) if clip > 0 else jax.nn.log_sigmoid(-logits)
  pos = y * _focus(1.0 - p, gamma_pos) * log_pos
  neg = (1.0 - y) * _focus(p_m, gamma_neg) * log_neg
  return _weighted_mean(-(pos + neg), known)


def softmax_cross_entropy(logits, labels, mask=None):
  """Categorical cross-entropy against the labels normalised to sum 1 (the softmax head).

  Unknown (-1) classes are left out of everything for that image: out of the target distribution
  (the known positives, normalised to sum 1), and out of the softmax itself (its normaliser runs
  over the known classes only), since an unknown class may well be the true one and must not be
  pushed down. The loss is the per-image cross-entropy averaged over the valid images that have at
  least one known class (an all-unknown image gives no information and is not counted). Without
  unknown entries this is the plain mean over valid images.
  """
  logits, y, known = _known(logits, labels, mask)
  y = y / jnp.maximum(jnp.sum(y, axis=-1, keepdims=True), 1.0)
  any_known = jnp.any(known, axis=-1, keepdims=True)
  top = jnp.max(jnp.where(known, logits, -jnp.inf), axis=-1, keepdims=True)
  top = jax.lax.stop_gradient(jnp.where(any_known, top, 0.0))
  z = jnp.where(known, logits - top, 0.0)  # no exp overflow (nor inf gradient) at unknown classes
  total = jnp.sum(jnp.where(known, jnp.exp(z), 0.0), axis=-1, keepdims=True)
  log_p = z - jnp.log(jnp.where(any_known, total, 1.0))
  per_image = -jnp.sum(y * log_p, axis=-1, keepdims=True)  # y is 0 at unknown classes
  return _weighted_mean(per_image, any_known)


def from_config(loss_config):
  """config.loss (checked by config.validate) -> fn(logits, labels, mask=None) -> scalar."""
  name, ls = loss_config.name, float(loss_config.label_smoothing)
  if name == "focal":
    return functools.partial(focal, gamma=float(loss_config.focal_gamma), label_smoothing=ls)
  if name == "asl":
    return functools.partial(asl, gamma_pos=float(loss_config.gamma_pos),
                             gamma_neg=float(loss_config.gamma_neg),
                             clip=float(loss_config.clip), label_smoothing=ls)
  return functools.partial(bce, label_smoothing=ls)


def unknown_as_negative(loss):
  """The loss with unknown (-1) entries taken as absent (0): the naive partial-label baseline."""
  def wrapped(logits, labels, mask=None):
    return loss(logits, jnp.where(labels < 0, jnp.zeros_like(labels), labels), mask)
  return wrapped


def for_config(config):
  """The training loss of a whole config: config.loss for a sigmoid head, softmax cross-entropy
  for a softmax head (head.activation); loss.unknown='negative' counts unknown entries as absent
  instead of leaving them out (the default, 'ignore')."""
  unknown = config.loss.get("unknown", "ignore")
  loss = softmax_cross_entropy if config.head.activation == "softmax" else from_config(config.loss)
  return unknown_as_negative(loss) if unknown == "negative" else loss
