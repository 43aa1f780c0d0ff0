"""Losses against numpy references written from the papers' formulas (and Keras' BCE)."""
import numpy as np
import pytest

from conftest import default_config
from mlc_jax.train import losses
from mlc_jax.errors import UserError

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 3, (6, 5)).astype(np.float32)
LABELS = (RNG.random((6, 5)) < 0.4).astype(np.float32)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x.astype(np.float64)))


def _bce_ref(logits, y):
  p = _sigmoid(logits)
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_bce_matches_numpy_and_keras_smoothing():
  np.testing.assert_allclose(losses.bce(LOGITS, LABELS), _bce_ref(LOGITS, LABELS).mean(), rtol=1e-5)
  y = LABELS * 0.8 + 0.1  # Keras: y * (1 - s) + s / 2 with s = 0.2
  np.testing.assert_allclose(losses.bce(LOGITS, LABELS, label_smoothing=0.2),
                             _bce_ref(LOGITS, y).mean(), rtol=1e-5)


def test_bce_hand_value_and_mask():
  # One image, one label: logit 0 -> p = 0.5 -> loss = ln 2.
  assert float(losses.bce(np.zeros((1, 1)), np.ones((1, 1)))) == pytest.approx(np.log(2), rel=1e-6)
  mask = np.array([True, True, False, True, False, True])
  np.testing.assert_allclose(losses.bce(LOGITS, LABELS, mask),
                             _bce_ref(LOGITS[mask], LABELS[mask]).mean(), rtol=1e-5)


def test_bce_is_stable_for_huge_logits():
  value = losses.bce(np.array([[100.0, -100.0]]), np.array([[0.0, 1.0]]))
  assert float(value) == pytest.approx(100.0, rel=1e-5)


def test_focal_matches_numpy():
  gamma = 2.0
  p = _sigmoid(LOGITS)
  ref = -(LABELS * (1 - p) ** gamma * np.log(p) + (1 - LABELS) * p ** gamma * np.log(1 - p))
  np.testing.assert_allclose(losses.focal(LOGITS, LABELS, gamma=gamma), ref.mean(), rtol=1e-5)
  # gamma = 0 is plain BCE.
  np.testing.assert_allclose(losses.focal(LOGITS, LABELS, gamma=0.0), losses.bce(LOGITS, LABELS),
                             rtol=1e-6)


def test_asl_matches_numpy_reference():
  gp, gn, clip = 1.0, 4.0, 0.05
  p = _sigmoid(LOGITS)
  p_m = np.maximum(p - clip, 0)
  ref = -(LABELS * (1 - p) ** gp * np.log(p)
          + (1 - LABELS) * p_m ** gn * np.log(np.maximum(1 - p_m, 1e-8)))
  got = losses.asl(LOGITS, LABELS, gamma_pos=gp, gamma_neg=gn, clip=clip)
  np.testing.assert_allclose(got, ref.mean(), rtol=1e-5)


def test_asl_easy_negatives_cost_nothing_and_grad_is_finite():
  import jax
  # p = sigmoid(-5) < clip: the negative is discarded entirely.
  assert float(losses.asl(np.array([[-5.0]]), np.array([[0.0]]), clip=0.05)) == 0.0
  grad = jax.grad(lambda x: losses.asl(x, np.array([[1.0, 0.0]]), gamma_pos=0.0))(
      np.array([[40.0, -40.0]], np.float32))
  assert np.all(np.isfinite(grad))


def test_from_config_and_errors():
  c = default_config()
  assert float(losses.from_config(c.loss)(LOGITS, LABELS)) == pytest.approx(
      float(_bce_ref(LOGITS, LABELS).mean()), rel=1e-5)
  c.loss.name = "hinge"
  with pytest.raises(UserError, match="loss.name"):
    losses.from_config(c.loss)
  c.loss.name, c.loss.label_smoothing = "bce", 1.5
  with pytest.raises(UserError, match="label_smoothing"):
    losses.from_config(c.loss)


def test_softmax_cross_entropy_matches_numpy():
  y = LABELS / np.maximum(LABELS.sum(-1, keepdims=True), 1)
  z = LOGITS - LOGITS.max(-1, keepdims=True)
  log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, LABELS),
                             -(y * log_softmax).sum(-1).mean(), rtol=1e-5)
