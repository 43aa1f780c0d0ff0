"""mlc_jax.metrics against sklearn (random data with ties, imbalanced classes), hand math and edge cases."""
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from mlc_jax import metrics
from mlc_jax.metrics import multilabel
from mlc_jax.errors import UserError

TOL = 1e-5


def _top_k(scores, k, threshold=None):
  """Exactly k labels per image, ties to the lower class index (stable sort), optionally score >= threshold."""
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  pred = np.zeros(scores.shape, int)
  np.put_along_axis(pred, order, 1, axis=1)
  if threshold is not None:
    pred &= scores >= threshold
  return pred


def _class_and_overall(y, pred, has_pos):
  """CP CR CF1 OP OR OF1 from sklearn's precision/recall (0 where undefined)."""
  p = skm.precision_score(y, pred, average=None, zero_division=0)[has_pos].mean()
  r = skm.recall_score(y, pred, average=None, zero_division=0)[has_pos].mean()
  op = skm.precision_score(y, pred, average="micro", zero_division=0)
  orr = skm.recall_score(y, pred, average="micro", zero_division=0)
  f1 = lambda a, b: 0.0 if a + b == 0 else 2 * a * b / (a + b)
  return [p, r, f1(p, r), op, orr, f1(op, orr)]


def sklearn_reference(scores, y, k=3, threshold=0.5, topk_min_score=False):
  """Every key of metrics.compute from sklearn (numpy for one_error and top-k predictions)."""
  pred = (scores >= threshold).astype(int)
  has_pos = y.sum(0) > 0
  ref = {"AP": np.array([skm.average_precision_score(y[:, j], scores[:, j]) if has_pos[j] else 0.0
                         for j in range(y.shape[1])])}
  ref["mAP"] = ref["AP"][has_pos].mean()
  names = ["CP", "CR", "CF1", "OP", "OR", "OF1"]
  ref.update(zip(names, _class_and_overall(y, pred, has_pos)))
  top = _top_k(scores, k, threshold if topk_min_score else None)
  ref.update(zip([f"{n}_top{k}" for n in names], _class_and_overall(y, top, has_pos)))
  for average in ("macro", "micro", "samples"):
    ref[f"f1_{average}"] = skm.f1_score(y, pred, average=average, zero_division=1)
    ref[f"jaccard_{average}"] = skm.jaccard_score(y, pred, average=average, zero_division=1)
  ref["hamming_loss"] = skm.hamming_loss(y, pred)
  ref["subset_accuracy"] = skm.accuracy_score(y, pred)
  ref["zero_one_loss"] = skm.zero_one_loss(y, pred)
  ref["lrap"] = skm.label_ranking_average_precision_score(y, scores)
  ref["ranking_loss"] = skm.label_ranking_loss(y, scores)
  labelled = y.sum(1) > 0
  ref["coverage"] = skm.coverage_error(y[labelled], scores[labelled])
  ref["one_error"] = np.mean(y[labelled][np.arange(labelled.sum()), scores[labelled].argmax(1)] == 0)
  return ref


def assert_matches(got, ref):
  for key, value in ref.items():
    np.testing.assert_allclose(got[key], value, rtol=0, atol=TOL, err_msg=key)
    assert not np.any(np.isnan(got[key])), key


@pytest.fixture(scope="module")
def tied_data():
  """600 images x 12 classes: scores on a 0.1 grid (many ties), prevalence 0.5% .. 60%, one empty class
  and images without labels."""
  rng = np.random.default_rng(0)
  scores = rng.random((600, 12))
  y = (rng.random((600, 12)) < np.geomspace(0.005, 0.6, 12)).astype(np.int64)
  y[:, 4] = 0
  # make the scores informative, so precision and AP are far from trivial
  scores = np.round(np.where(y == 1, np.minimum(scores + 0.3, 1.0), scores), 1).astype(np.float32)
  return scores, y


@pytest.mark.parametrize("topk_min_score", [False, True])
def test_every_key_matches_sklearn_with_ties(tied_data, topk_min_score):
  scores, y = tied_data
  assert (y.sum(1) == 0).any() and len(np.unique(scores)) <= 11
  got = metrics.compute(scores, y, k=3, threshold=0.5, topk_min_score=topk_min_score)
  assert_matches(got, sklearn_reference(scores, y, 3, 0.5, topk_min_score))
  assert list(got["classes_without_positives"]) == [4]
  assert ("score >=" in got["topk_variant"]) == topk_min_score
  assert all(isinstance(v, float) for v in got.values() if not isinstance(v, (np.ndarray, str)))


def test_negative_scores_and_bool_labels_match_sklearn(tied_data):
  # logits instead of probabilities take the kernels' general sort
  scores, y = tied_data
  logits = (scores - 0.5) * 4
  got = metrics.compute(logits, y.astype(bool), k=3, threshold=0.0)
  assert_matches(got, sklearn_reference(logits, y, 3, 0.0))


def test_chunked_equals_one_shot(tied_data, monkeypatch):
  scores, y = tied_data
  whole = metrics.compute(scores, y)
  # 250-row chunks (the last one padded) and 5-class blocks (the last one padded)
  monkeypatch.setattr(multilabel, "_ROW_CHUNK_ELEMENTS", 250 * 12)
  monkeypatch.setattr(multilabel, "_CLASS_BLOCK_ELEMENTS", 600 * 5)
  chunked = metrics.compute(scores, y)
  for key, value in whole.items():
    if key != "topk_variant":
      np.testing.assert_allclose(chunked[key], value, rtol=0, atol=1e-6, err_msg=key)


HAND_SCORES = np.array([[0.9, 0.6, 0.1], [0.2, 0.8, 0.7], [0.5, 0.5, 0.5], [0.3, 0.1, 0.4]], np.float32)
HAND_LABELS = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_hand_computed_threshold_and_top_k(dtype):
  # bfloat16 (model outputs) keeps every comparison with 0.5 and every tie of these scores
  got = metrics.compute(jnp.asarray(HAND_SCORES, dtype), HAND_LABELS, k=2, threshold=0.5)
  # per class (precision, recall) at >= 0.5: (1, 1), (1/3, 1), (1, 2/3); pooled 5/7 and 5/6
  expected = {"CP": 7 / 9, "CR": 8 / 9, "CF1": 112 / 135, "OP": 5 / 7, "OR": 5 / 6, "OF1": 10 / 13,
              # top-2, the tied image 2 takes classes 0 and 1: (2/3, 1), (1/3, 1), (1, 2/3)
              "CP_top2": 2 / 3, "CR_top2": 8 / 9, "CF1_top2": 16 / 21,
              "OP_top2": 5 / 8, "OR_top2": 5 / 6, "OF1_top2": 5 / 7}
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key
  # the ML-GCN variant drops image 3's top-2 (scores 0.4 and 0.3 < 0.5)
  got = metrics.compute(HAND_SCORES, HAND_LABELS, k=2, threshold=0.5, topk_min_score=True)
  expected = {"CP_top2": 7 / 9, "CR_top2": 7 / 9, "CF1_top2": 7 / 9,
              "OP_top2": 2 / 3, "OR_top2": 2 / 3, "OF1_top2": 2 / 3}
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, abs=1e-9), key


def test_all_equal_scores():
  rng = np.random.default_rng(1)
  y = (rng.random((50, 6)) < 0.3).astype(int)
  y[:3] = 0
  y[3] = 1  # every label: sklearn's lrap counts 1, its ranking loss 0
  scores = np.full((50, 6), 0.5, np.float32)
  got = metrics.compute(scores, y, k=2)
  has_pos = y.sum(0) > 0
  # one tied run: precision is the prevalence at the only threshold
  np.testing.assert_allclose(got["AP"][has_pos], y.mean(0)[has_pos], atol=1e-6)
  some = (y.sum(1) > 0) & (y.sum(1) < 6)
  lrap_rows = np.where(some, y.sum(1) / 6, 1.0)
  assert got["lrap"] == pytest.approx(lrap_rows.mean(), abs=1e-6)
  assert got["ranking_loss"] == pytest.approx(some.mean(), abs=1e-6)
  assert got["coverage"] == 6.0
  labelled = y.sum(1) > 0
  assert got["one_error"] == pytest.approx(np.mean(y[labelled, 0] == 0), abs=1e-9)
  # top-2 of a full tie: classes 0 and 1 for every image
  assert got["OP_top2"] == pytest.approx(y[:, :2].sum() / 100, abs=1e-9)
  assert_matches(got, sklearn_reference(scores, y, 2))


def test_no_positive_anywhere_is_never_nan():
  scores = np.random.default_rng(2).random((50, 6)).astype(np.float32)
  got = metrics.compute(scores, np.zeros((50, 6), int), k=2)
  assert list(got["classes_without_positives"]) == list(range(6))
  for key, value in got.items():
    if key != "topk_variant":
      assert not np.any(np.isnan(value)), key
  assert got["mAP"] == 0.0 and got["CP"] == 0.0 and got["coverage"] == 0.0 and got["one_error"] == 0.0


def test_per_class_table_matches_sklearn(tied_data):
  scores, y = tied_data
  names = [f"class{i}" for i in range(12)]
  table = metrics.per_class_table(scores, y, names)
  pred = (scores >= 0.5).astype(int)
  precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, zero_division=0)
  assert [row["name"] for row in table] == names
  for key, ref in (("precision", precision), ("recall", recall), ("F1", f1), ("support", support)):
    np.testing.assert_allclose([row[key] for row in table], ref, atol=TOL, err_msg=key)
  ap = sklearn_reference(scores, y)["AP"]
  np.testing.assert_allclose([row["AP"] for row in table], ap, atol=TOL)


def test_tune_thresholds_maximises_each_class_f1(tied_data):
  scores, y = tied_data
  thresholds = metrics.tune_thresholds(scores, y)
  for j in range(12):
    candidates = np.unique(scores[:, j])
    f1s = [skm.f1_score(y[:, j], scores[:, j] >= t, zero_division=0) for t in candidates]
    if y[:, j].sum() == 0:
      assert thresholds[j] > scores[:, j].max()
      continue
    # the highest observed score among the F1-maximising ones
    best = candidates[np.flatnonzero(np.isclose(f1s, max(f1s), rtol=0, atol=1e-12))[-1]]
    assert thresholds[j] == best, j


@pytest.mark.parametrize("scores, labels, kwargs, match", [
    (np.zeros((4, 3)), np.zeros((4, 2)), {}, "differ in shape"),
    (np.zeros(4), np.zeros(4), {}, "2-D"),
    (np.zeros((0, 3)), np.zeros((0, 3)), {}, "empty"),
    (np.zeros((4, 3), int), np.zeros((4, 3)), {}, "floating-point"),
    (np.zeros((4, 3)), np.array([["a"] * 3] * 4), {}, "multi-hot"),
    (np.zeros((4, 3)), np.full((4, 3), 2), {}, "0 or 1"),
    (np.full((4, 3), np.nan), np.zeros((4, 3)), {}, "NaN or infinite"),
    (np.full((4, 3), np.inf), np.zeros((4, 3)), {}, "NaN or infinite"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"k": 4}, "k=4"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"k": 0}, "k=0"),
])
def test_bad_input_raises_user_error(scores, labels, kwargs, match):
  with pytest.raises(UserError, match=match):
    metrics.compute(scores, labels, **kwargs)


# Unknown labels (-1): every metric on the known entries only. The oracle applies sklearn to the known
# entries class by class and image by image, and counts pooled entries with numpy.

def _known_top_k(scores, y, k, threshold=None):
  """Per image, its k best-scored known classes (all when fewer), ties to the lower class index."""
  pred = np.zeros(y.shape, bool)
  for i in range(len(y)):
    cols = np.flatnonzero(y[i] != -1)
    pred[i, cols[np.argsort(-scores[i, cols], kind="stable")[:k]]] = True
  return pred & (scores >= threshold) if threshold is not None else pred


def _per_class_known(y, pred):
  """sklearn's precision and recall of each class on its known rows, and which classes have a positive."""
  c = y.shape[1]
  precision, recall, has_pos = np.zeros(c), np.zeros(c), np.zeros(c, bool)
  for j in range(c):
    rows = y[:, j] != -1
    has_pos[j] = (y[rows, j] == 1).any()
    if has_pos[j]:
      precision[j] = skm.precision_score(y[rows, j], pred[rows, j], zero_division=0)
      recall[j] = skm.recall_score(y[rows, j], pred[rows, j], zero_division=0)
  return precision, recall, has_pos


def _pooled_known(y, pred):
  """(tp, fp, fn) over every known entry, numpy."""
  known, pos = y != -1, y == 1
  return (pred & pos).sum(), (pred & known & ~pos).sum(), (~pred & pos).sum()


def known_oracle(scores, y, k=3, threshold=0.5, topk_min_score=False):
  """Every key of metrics.compute from sklearn on the known entries (numpy for pooled counts, top-k)."""
  n, c = y.shape
  known = y != -1
  pred = scores >= threshold
  f1_h = lambda a, b: 0.0 if a + b == 0 else 2 * a * b / (a + b)
  ref = {"AP": np.zeros(c)}
  f1_c, jac_c = [], []
  for j in range(c):
    rows = known[:, j]
    yj, sj, pj = y[rows, j], scores[rows, j], pred[rows, j]
    if (yj == 1).any():
      ref["AP"][j] = skm.average_precision_score(yj, sj)
    if rows.any():
      f1_c.append(skm.f1_score(yj, pj, labels=[1], average="macro", zero_division=1))
      jac_c.append(skm.jaccard_score(yj, pj, labels=[1], average="macro", zero_division=1))
  names = ["CP", "CR", "CF1", "OP", "OR", "OF1"]
  top = _known_top_k(scores, y, k, threshold if topk_min_score else None)
  for suffix, p in (("", pred), (f"_top{k}", top)):
    precision, recall, has_pos = _per_class_known(y, p)
    cp, cr = precision[has_pos].mean(), recall[has_pos].mean()
    tp, fp, fn = _pooled_known(y, p)
    op, orr = tp / (tp + fp), tp / (tp + fn)
    ref.update(zip([name + suffix for name in names], [cp, cr, f1_h(cp, cr), op, orr, f1_h(op, orr)]))
  ref["mAP"] = ref["AP"][has_pos].mean()
  ref["f1_macro"], ref["jaccard_macro"] = np.mean(f1_c), np.mean(jac_c)
  tp, fp, fn = _pooled_known(y, pred)
  ref["f1_micro"], ref["jaccard_micro"] = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
  ref["hamming_loss"] = np.mean((y != pred)[known])
  per_image = {name: [] for name in ("f1", "jac", "exact", "lrap", "rl", "coverage", "one_error")}
  for i in range(n):
    cols = np.flatnonzero(known[i])
    if not len(cols):
      continue
    yi, si, pi = y[i, cols], scores[i, cols], pred[i, cols]
    per_image["f1"].append(skm.f1_score(yi, pi, labels=[1], average="macro", zero_division=1))
    per_image["jac"].append(skm.jaccard_score(yi, pi, labels=[1], average="macro", zero_division=1))
    per_image["exact"].append(np.array_equal(yi, pi))
    if len(cols) == 1:  # sklearn's ranking metrics refuse one column: no pair, rank 1
      per_image["lrap"].append(1.0)
      per_image["rl"].append(0.0)
    else:
      per_image["lrap"].append(skm.label_ranking_average_precision_score(yi[None], si[None]))
      per_image["rl"].append(skm.label_ranking_loss(yi[None], si[None]))
    if yi.sum():
      per_image["coverage"].append(skm.coverage_error(yi[None], si[None]) if len(cols) > 1 else 1.0)
      per_image["one_error"].append(yi[np.argmax(si)] == 0)
  ref["f1_samples"], ref["jaccard_samples"] = np.mean(per_image["f1"]), np.mean(per_image["jac"])
  ref["subset_accuracy"] = np.mean(per_image["exact"])
  ref["zero_one_loss"] = 1 - ref["subset_accuracy"]
  ref["lrap"], ref["ranking_loss"] = np.mean(per_image["lrap"]), np.mean(per_image["rl"])
  ref["coverage"], ref["one_error"] = np.mean(per_image["coverage"]), np.mean(per_image["one_error"])
  ref["unknown_per_class"] = (~known).sum(0)
  ref["unknown_fraction"] = np.mean(~known)
  return ref


def with_unknowns(scores, y, fraction, seed=0):
  """The first 300 images, with `fraction` of the label entries -1 and the edge cases: class 7 nobody
  annotated, image 0 with no known label, image 1 with two known classes (fewer than k=3), class 0's
  positives all unknown."""
  rng = np.random.default_rng(seed)
  scores, y = scores[:300], y[:300]
  y = np.where(rng.random(y.shape) < fraction, -1, y).astype(np.int8)
  y[:, 7] = -1
  y[0] = -1
  y[1] = -1
  y[1, [2, 9]] = [1, 0]
  y[y[:, 0] == 1, 0] = -1
  return scores, y


@pytest.mark.parametrize("fraction, topk_min_score", [(0.05, False), (0.5, False), (0.2, True)])
def test_unknown_entries_match_sklearn_on_known_entries(tied_data, fraction, topk_min_score):
  scores, y = with_unknowns(*tied_data, fraction)
  known_r = (y != -1).sum(1)
  assert known_r[0] == 0 and known_r[1] == 2 and (y[:, 7] == -1).all() and (y[:, 0] != 1).all()
  got = metrics.compute(scores, y, k=3, threshold=0.5, topk_min_score=topk_min_score)
  assert_matches(got, known_oracle(scores, y, 3, 0.5, topk_min_score))
  without = list(np.flatnonzero(~(y == 1).any(0)))
  assert list(got["classes_without_positives"]) == without and {0, 4, 7} <= set(without)
  assert list(got["classes_without_known_labels"]) == [7]
  assert list(got["images_without_known_labels"]) == list(np.flatnonzero(known_r == 0))
  assert got["unknown_per_class"].sum() == (y == -1).sum()


def test_unknown_entries_with_logits_match_sklearn(tied_data):
  # negative scores take the kernels' general sort, where unknown entries sort last by another key
  scores, y = with_unknowns(*tied_data, 0.2, seed=1)
  logits = (scores - 0.5) * 4
  got = metrics.compute(logits, y, k=3, threshold=0.0)
  assert_matches(got, known_oracle(logits, y, 3, 0.0))


def test_unknowns_by_hand():
  scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.6, 0.6, 0.2, 0.9], [0.3, 0.3, 0.3, 0.3]], np.float32)
  labels = np.array([[-1, 0, 1, 0], [1, -1, 0, -1], [-1, -1, -1, -1]], np.int8)
  got = metrics.compute(scores, labels, k=2, threshold=0.5)
  # image 0 ranks 1, 2, 3 (class 0 unknown): top-2 {1, 2}; image 1 has two known classes: top-2 {0, 2}
  assert got["OP_top2"] == pytest.approx(2 / 4) and got["OR_top2"] == 1.0
  # at 0.5, image 0 predicts 1, 2 (class 0 unknown); image 1 predicts 0: known entries wrong 1 of 5
  assert got["hamming_loss"] == pytest.approx(1 / 5) and got["OP"] == pytest.approx(2 / 3)
  assert got["AP"][2] == pytest.approx(1.0) and got["AP"][0] == pytest.approx(1.0)
  assert got["coverage"] == pytest.approx((2 + 1) / 2) and got["one_error"] == pytest.approx(1 / 2)
  assert list(got["images_without_known_labels"]) == [2] and got["unknown_fraction"] == 7 / 12
  assert list(got["classes_without_positives"]) == [1, 3]


def test_chunked_equals_one_shot_with_unknowns(tied_data, monkeypatch):
  scores, y = with_unknowns(*tied_data, 0.2)
  whole = metrics.compute(scores, y)
  # 120-row chunks (the last one padded) and 5-class blocks (the last one padded)
  monkeypatch.setattr(multilabel, "_ROW_CHUNK_ELEMENTS", 120 * 12)
  monkeypatch.setattr(multilabel, "_CLASS_BLOCK_ELEMENTS", 300 * 5)
  chunked = metrics.compute(scores, y)
  for key, value in whole.items():
    if key != "topk_variant":
      np.testing.assert_allclose(chunked[key], value, rtol=0, atol=1e-6, err_msg=key)


def test_label_dtypes_give_the_same_numbers(tied_data):
  scores, y = with_unknowns(*tied_data, 0.2)
  ref = metrics.compute(scores, y)
  for dtype in (np.int64, np.int32, np.float32, np.float64):
    got = metrics.compute(scores, y.astype(dtype))
    for key, value in ref.items():
      np.testing.assert_array_equal(got[key], value, err_msg=f"{dtype} {key}")
  complete = tied_data[1][:300]
  ref = metrics.compute(scores, complete.astype(np.int8))
  got = metrics.compute(scores, complete.astype(bool))
  for key, value in ref.items():
    np.testing.assert_array_equal(got[key], value, err_msg=f"bool {key}")
  assert got["unknown_fraction"] == 0.0 and not len(got["images_without_known_labels"])


def test_every_label_unknown_is_never_nan():
  scores = np.random.default_rng(3).random((20, 5)).astype(np.float32)
  got = metrics.compute(scores, np.full((20, 5), -1, np.int8), k=2)
  assert len(got["images_without_known_labels"]) == 20 and got["unknown_fraction"] == 1.0
  for key, value in got.items():
    if key != "topk_variant":
      assert not np.any(np.isnan(value)), key
  assert got["mAP"] == 0.0 and got["f1_samples"] == 0.0 and got["hamming_loss"] == 0.0


def test_per_class_table_with_unknowns_matches_sklearn(tied_data):
  scores, y = with_unknowns(*tied_data, 0.2)
  table = metrics.per_class_table(scores, y, [f"class{i}" for i in range(12)])
  for j, row in enumerate(table):
    rows = y[:, j] != -1
    assert row["unknown"] == (~rows).sum()
    if not rows.any():  # class 7, nobody annotated
      assert (row["precision"], row["recall"], row["F1"], row["AP"], row["support"]) == (0, 0, 0, 0, 0)
      continue
    yj, pj = y[rows, j], scores[rows, j] >= 0.5
    p, r, f1, _ = skm.precision_recall_fscore_support(yj, pj, labels=[1], zero_division=0)
    ap = skm.average_precision_score(yj, scores[rows, j]) if (yj == 1).any() else 0.0
    np.testing.assert_allclose([row["precision"], row["recall"], row["F1"], row["AP"]],
                               [p[0], r[0], f1[0], ap], atol=TOL, err_msg=str(j))
    assert row["support"] == (yj == 1).sum()


def test_tune_thresholds_maximises_each_class_f1_on_known_images(tied_data):
  scores, y = with_unknowns(*tied_data, 0.2)
  thresholds = metrics.tune_thresholds(scores, y)
  for j in range(12):
    rows = y[:, j] != -1
    if not (y[rows, j] == 1).any():  # classes 0, 4 and 7
      assert thresholds[j] > scores[:, j].max(), j
      continue
    candidates = np.unique(scores[rows, j])
    f1s = [skm.f1_score(y[rows, j], scores[rows, j] >= t, zero_division=0) for t in candidates]
    best = candidates[np.flatnonzero(np.isclose(f1s, max(f1s), rtol=0, atol=1e-12))[-1]]
    assert thresholds[j] == best, j


@pytest.mark.parametrize("bad", [2, -2, 0.5, np.nan])
def test_values_other_than_known_or_unknown_are_rejected(bad):
  labels = np.array([[1, 0, -1], [0, bad, -1]], np.float64)
  with pytest.raises(UserError, match="0 or 1, or -1"):
    metrics.compute(np.zeros((2, 3)), labels)
  if bad in (2, -2):
    with pytest.raises(UserError, match="0 or 1, or -1"):
      metrics.compute(np.zeros((2, 3)), labels.astype(np.int8))
