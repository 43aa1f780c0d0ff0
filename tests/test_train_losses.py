"""Losses against numpy references written from the papers' formulas (and Keras' BCE)."""
import numpy as np
import pytest

from conftest import default_config
from mlc_jax.train import losses
from mlc_jax import config as config_lib
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
  for name, value, message in (("name", "hinge", "loss.name"),
                               ("label_smoothing", 1.5, "label_smoothing")):
    c = default_config()
    c.loss[name] = value
    with pytest.raises(UserError, match=message):  # the config's check, before any loss is built
      config_lib.validate(c)


def test_softmax_cross_entropy_matches_numpy():
  y = LABELS / np.maximum(LABELS.sum(-1, keepdims=True), 1)
  z = LOGITS - LOGITS.max(-1, keepdims=True)
  log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(losses.softmax_cross_entropy(LOGITS, LABELS),
                             -(y * log_softmax).sum(-1).mean(), rtol=1e-5)


# --- Unknown (-1) label entries and padded rows -------------------------------------------------
# A batch as the pipeline yields it: int8 targets with ~30% unknown entries, two padded rows
# (mask False) whose logits and labels are garbage that must not count.
U_LOGITS = RNG.normal(0, 3, (9, 7)).astype(np.float32)
U_LABELS = np.where(RNG.random((9, 7)) < 0.3, -1, RNG.random((9, 7)) < 0.4).astype(np.int8)
U_MASK = np.array([True, True, False, True, True, True, False, True, True])
SIGMOID_LOSSES = {  # name -> (fn, kwargs): every sigmoid loss, with non-default settings
    "bce": (losses.bce, {}),
    "focal": (losses.focal, {"gamma": 2.0}),
    "asl": (losses.asl, {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05}),
    "asl_noclip": (losses.asl, {"gamma_pos": 0.0, "gamma_neg": 2.0, "clip": 0.0}),
}


def _entry_ref(name, x, y, kw):
  """One entry's loss in float64 from the papers' formulas (y already smoothed)."""
  p = 1 / (1 + np.exp(-float(x)))
  if name == "bce":
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))
  if name == "focal":
    g = kw["gamma"]
    return -(y * (1 - p) ** g * np.log(p) + (1 - y) * p ** g * np.log(1 - p))
  clip = kw["clip"]
  p_m = max(p - clip, 0.0)
  return -(y * (1 - p) ** kw["gamma_pos"] * np.log(p)
           + (1 - y) * p_m ** kw["gamma_neg"] * np.log(max(1 - p_m, 1e-8)))


def _known_ref(name, logits, labels, mask, kw, ls=0.0):
  """Entry by entry: sum over known entries of valid rows / their count."""
  total, count = 0.0, 0
  for i in range(labels.shape[0]):
    for j in range(labels.shape[1]):
      if (mask is not None and not mask[i]) or labels[i, j] == -1:
        continue
      y = float(labels[i, j]) * (1 - ls) + ls / 2
      total += _entry_ref(name, logits[i, j], y, kw)
      count += 1
  return total / max(count, 1)


def _softmax_ref(logits, labels, mask):
  """Entry by entry: the softmax and the target run over the known classes of each valid image;
  the mean runs over the valid images with at least one known class."""
  total, count = 0.0, 0
  for i in range(labels.shape[0]):
    known = [j for j in range(labels.shape[1]) if labels[i, j] != -1]
    if (mask is not None and not mask[i]) or not known:
      continue
    x = logits[i, known].astype(np.float64)
    log_p = x - x.max() - np.log(np.exp(x - x.max()).sum())
    y = labels[i, known].astype(np.float64)
    y = y / max(y.sum(), 1.0)
    total += -(y * log_p).sum()
    count += 1
  return total / max(count, 1)


@pytest.mark.parametrize("ls", [0.0, 0.2])
@pytest.mark.parametrize("name", sorted(SIGMOID_LOSSES))
def test_sigmoid_losses_average_over_known_entries_of_valid_rows(name, ls):
  assert 0.2 < np.mean(U_LABELS == -1) < 0.4
  fn, kw = SIGMOID_LOSSES[name]
  got = fn(U_LOGITS, U_LABELS, U_MASK, label_smoothing=ls, **kw)
  np.testing.assert_allclose(got, _known_ref(name, U_LOGITS, U_LABELS, U_MASK, kw, ls), rtol=1e-5)
  got = fn(U_LOGITS, U_LABELS, label_smoothing=ls, **kw)  # mask None: every row is valid
  np.testing.assert_allclose(got, _known_ref(name, U_LOGITS, U_LABELS, None, kw, ls), rtol=1e-5)


@pytest.mark.parametrize("ls", [0.0, 0.2])
@pytest.mark.parametrize("name", sorted(SIGMOID_LOSSES))
def test_without_unknowns_value_is_mean_over_classes_then_valid_images(name, ls):
  # The pre-unknown definition: mean over classes, then mean over the valid images.
  fn, kw = SIGMOID_LOSSES[name]
  labels = (U_LABELS == 1).astype(np.float32)
  per_label = np.vectorize(lambda x, y: _entry_ref(name, x, y, kw))(
      U_LOGITS, labels * (1 - ls) + ls / 2)
  old = per_label.mean(-1)[U_MASK].mean()
  np.testing.assert_allclose(fn(U_LOGITS, labels, U_MASK, label_smoothing=ls, **kw), old,
                             rtol=1e-6)


def test_softmax_cross_entropy_over_known_classes():
  labels = U_LABELS.copy()
  labels[4] = -1  # an all-unknown valid image: not counted at all
  got = losses.softmax_cross_entropy(U_LOGITS, labels, U_MASK)
  np.testing.assert_allclose(got, _softmax_ref(U_LOGITS, labels, U_MASK), rtol=1e-5)
  # Without unknowns: the per-image mean over valid images, as before.
  labels = (U_LABELS == 1).astype(np.float32)
  y = labels / np.maximum(labels.sum(-1, keepdims=True), 1)
  z = U_LOGITS - U_LOGITS.max(-1, keepdims=True)
  log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(losses.softmax_cross_entropy(U_LOGITS, labels, U_MASK),
                             -(y * log_softmax).sum(-1)[U_MASK].mean(), rtol=1e-6)


def test_unknown_entries_hand_computation():
  logits = np.array([[0.0, 2.0], [7.0, -1.0], [5.0, 5.0]], np.float32)
  labels = np.array([[1, -1], [-1, 0], [1, 1]], np.int8)
  mask = np.array([True, True, False])
  # Known entries of valid rows: (0, 0) y=1 x=0 -> ln 2; (1, 1) y=0 x=-1 -> ln(1 + e^-1).
  want = (np.log(2) + np.log1p(np.exp(-1))) / 2
  assert float(losses.bce(logits, labels, mask)) == pytest.approx(want, rel=1e-6)
  # With smoothing s=0.2 the known targets become 0.9 and 0.1.
  sp = lambda x: np.log1p(np.exp(x))  # -log_sigmoid(-x); loss = y sp(-x) + (1-y) sp(x)
  want = (0.9 * sp(-0.0) + 0.1 * sp(0.0) + 0.1 * sp(1.0) + 0.9 * sp(-1.0)) / 2
  got = losses.bce(logits, labels, mask, label_smoothing=0.2)
  assert float(got) == pytest.approx(want, rel=1e-6)
  # Softmax: class 2 (unknown, logit 5) is out of the normaliser -> softmax([0, 0])[0] = 1/2.
  value = losses.softmax_cross_entropy(np.array([[0.0, 0.0, 5.0]]), np.array([[1, 0, -1]]))
  assert float(value) == pytest.approx(np.log(2), rel=1e-6)
  # Nothing known: 0, not 0/0.
  for fn, kw in SIGMOID_LOSSES.values():
    assert float(fn(logits, np.full((3, 2), -1, np.int8), mask, **kw)) == 0.0
  assert float(losses.softmax_cross_entropy(logits, np.full((3, 2), -1, np.int8), mask)) == 0.0


def _all_losses():
  yield from ((name, fn, kw) for name, (fn, kw) in sorted(SIGMOID_LOSSES.items()))
  yield "focal_gamma_half", losses.focal, {"gamma": 0.5}  # infinite derivative of p**0.5 at p=0
  yield "softmax", losses.softmax_cross_entropy, {}


@pytest.mark.parametrize("name,fn,kw", list(_all_losses()), ids=[n for n, _, _ in _all_losses()])
def test_gradient_is_zero_at_unknown_entries_and_padded_rows(name, fn, kw):
  import jax
  logits = U_LOGITS.copy()
  unknown = U_LABELS == -1
  logits[unknown] = np.where(RNG.random(unknown.sum()) < 0.5, 100.0, -100.0)  # saturated
  logits[2], logits[6] = 1e4, np.nan  # the padded rows: saturated, and garbage
  grad = np.asarray(jax.grad(lambda x: fn(x, U_LABELS, U_MASK, **kw))(logits))
  assert np.all(np.isfinite(grad))
  assert np.all(grad[unknown] == 0.0)
  assert np.all(grad[~U_MASK] == 0.0)
  assert np.any(grad[~unknown & U_MASK[:, None]] != 0.0)
  value = fn(logits, U_LABELS, U_MASK, **kw)
  assert np.isfinite(float(value))


@pytest.mark.parametrize("name,fn,kw", list(_all_losses()), ids=[n for n, _, _ in _all_losses()])
def test_label_dtypes_give_the_same_value(name, fn, kw):
  binary = U_LABELS == 1
  values = [float(fn(U_LOGITS, binary.astype(dt), U_MASK, **kw))
            for dt in (np.int8, np.bool_, np.float32, np.int32)]
  assert values == pytest.approx([values[0]] * 4, rel=1e-7, abs=0)
  values = [float(fn(U_LOGITS, U_LABELS.astype(dt), U_MASK, **kw))
            for dt in (np.int8, np.float32, np.int32)]
  assert values == pytest.approx([values[0]] * 3, rel=1e-7, abs=0)


def test_from_config_losses_skip_unknown_entries():
  c = default_config()
  for name, kw in (("bce", {}), ("focal", {"gamma": float(c.loss.focal_gamma)}),
                   ("asl", {"gamma_pos": float(c.loss.gamma_pos),
                            "gamma_neg": float(c.loss.gamma_neg), "clip": float(c.loss.clip)})):
    c.loss.name, c.loss.label_smoothing = name, 0.1
    got = losses.from_config(c.loss)(U_LOGITS, U_LABELS, U_MASK)
    np.testing.assert_allclose(got, _known_ref(name, U_LOGITS, U_LABELS, U_MASK, kw, 0.1),
                               rtol=1e-5)


def test_from_config_passes_non_default_loss_parameters():
  """loss.focal_gamma, loss.gamma_pos, loss.gamma_neg and loss.clip away from their defaults
  (2, 0, 4, 0.05) reach the loss: numpy reference at those values (and each differs from the
  value at the defaults, so a dropped key shows)."""
  c = default_config()
  c.loss.update(focal_gamma=0.7, gamma_pos=1.5, gamma_neg=1.0, clip=0.2, label_smoothing=0.1)
  for name, kw, default_kw in (
      ("focal", {"gamma": 0.7}, {"gamma": 2.0}),
      ("asl", {"gamma_pos": 1.5, "gamma_neg": 1.0, "clip": 0.2},
       {"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05})):
    c.loss.name = name
    got = float(losses.from_config(c.loss)(U_LOGITS, U_LABELS, U_MASK))
    want = float(_known_ref(name, U_LOGITS, U_LABELS, U_MASK, kw, 0.1))
    assert got == pytest.approx(want, rel=1e-5)
    for key in default_kw:  # one key at its default at a time: a different value
      other = float(_known_ref(name, U_LOGITS, U_LABELS, U_MASK, dict(kw, **{key: default_kw[key]}),
                               0.1))
      assert abs(other - want) > 1e-3 * want, key


def test_a_softmax_head_trains_on_softmax_cross_entropy_whatever_loss_name_says():
  """head.activation = 'softmax': the training loss is the softmax cross-entropy of the targets
  normalised to sum 1 (numpy), not loss.name's sigmoid loss; 'sigmoid' keeps loss.name."""
  config = default_config()
  config.loss.name = "focal"
  y = LABELS / np.maximum(LABELS.sum(-1, keepdims=True), 1)
  z = LOGITS - LOGITS.max(-1, keepdims=True)
  expected = -(y * (z - np.log(np.exp(z).sum(-1, keepdims=True)))).sum(-1).mean()
  config.head.activation = "softmax"
  np.testing.assert_allclose(losses.for_config(config)(LOGITS, LABELS), expected, rtol=1e-5)
  config.head.activation = "sigmoid"
  np.testing.assert_allclose(losses.for_config(config)(LOGITS, LABELS),
                             losses.focal(LOGITS, LABELS, gamma=2.0), rtol=1e-6)


@pytest.mark.parametrize("unknown", ["ignore", "negative"])
def test_unknown_targets_are_left_out_or_taken_as_absent(unknown):
  """A mixture's unannotated labels (-1): 'ignore' averages the known entries only, 'negative'
  (the naive baseline) counts them as absent; numpy by hand."""
  y = LABELS.copy()
  y[RNG.random(y.shape) < 0.3] = -1
  config = default_config()
  config.loss.unknown = unknown
  known = y >= 0
  per_entry = _bce_ref(LOGITS, np.where(known, y, 0))
  expected = per_entry[known].mean() if unknown == "ignore" else per_entry.mean()
  np.testing.assert_allclose(losses.for_config(config)(LOGITS, y.astype(np.int8)), expected,
                             rtol=1e-5)


def test_an_unknown_choice_for_unknown_targets_names_the_key():
  config = default_config()
  config.loss.unknown = "zero"
  with pytest.raises(UserError, match="loss.unknown='zero': choose one of"):
    config_lib.validate(config)
