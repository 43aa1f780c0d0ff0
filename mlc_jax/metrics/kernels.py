"""The jitted, vectorised kernels behind mlc_jax.metrics: one over image rows, two over class columns.

Labels arrive as int8 codes: 1 present, 0 absent, -1 unknown (2 marks a value that is none of these).
Unknown entries sort after every known one, so a rank counts known entries only, and are masked out
of every count. Every kernel sorts along the LAST axis: XLA:CPU sorts the transposed (C, N) array
along its last axis ~6x faster than the (N, C) array along axis 0. Tied scores form one group
everywhere (as sklearn's distinct thresholds): a group is predicted or ranked as a whole.
"""
import functools

import jax
import jax.numpy as jnp


def _sort_descending(scores, codes, nonneg):
  """Sorts each row by descending score (ties in any order) with its labels: (scores, positive 0/1).

  Unknown entries (code -1) come last, with positive 0 and score -inf (NaN on the `nonneg` path), so
  the first `known` places of a row are its known entries. With `nonneg` scores the label rides in
  the low bit of one uint32 key ((float bits + 1) << 1; 0 for unknown): XLA:CPU sorts a single
  integer operand ~3x faster than a float key with a payload.
  """
  known, positive = codes != -1, codes == 1
  if not nonneg:
    neg, pos = jax.lax.sort((jnp.where(known, -scores, jnp.inf), positive.astype(jnp.int8)),
                            dimension=scores.ndim - 1, num_keys=1, is_stable=False)
    return -neg, pos.astype(jnp.int32)
  # +0.0 for -0.0: non-negative float32 bits are then ordered like the values
  bits = jax.lax.bitcast_convert_type(jnp.where(scores == 0, 0.0, scores), jnp.uint32)
  key = jnp.where(known, ((bits + 1) << 1) | positive.astype(jnp.uint32), jnp.uint32(0))
  key = ~jax.lax.sort(~key, dimension=scores.ndim - 1)
  desc = jax.lax.bitcast_convert_type((key >> 1) - 1, jnp.float32)  # unknown: all ones, a NaN
  return desc, (key & 1).astype(jnp.int32)


def _cumsum(x, axis):
  """Inclusive running sum; jnp.cumsum lowers to a slow reduce_window on XLA:CPU (8x here)."""
  return jax.lax.associative_scan(jnp.add, x, axis=axis)


def _tie_groups(desc, pos, axis):
  """For arrays sorted by descending score `desc` along `axis`: (rank, tp, group_end, group_pos).

  rank counts 1..n, tp the positives so far, `group_end` marks each run's last member; `group_pos` holds, at the last element of each run of tied scores, the number of positives in the
  run (0 elsewhere): whole runs cross a threshold together.
  """
  n = desc.shape[axis]
  shape = [1] * desc.ndim
  shape[axis] = n
  rank = jnp.arange(1, n + 1, dtype=jnp.int32).reshape(shape)
  tp = _cumsum(pos, axis)
  rest, nxt = (jax.lax.slice_in_dim(desc, i, i + n - 1, axis=axis) for i in (0, 1))
  group_end = jnp.concatenate([rest != nxt, jnp.ones_like(jax.lax.slice_in_dim(rest, 0, 1, axis=axis), bool)],
                              axis=axis)
  # cumulative positives at the previous group end: tp only grows, so a running max finds it
  tp_at_ends = jax.lax.associative_scan(jnp.maximum, jnp.where(group_end, tp, 0), axis=axis)
  before = jnp.concatenate([jnp.zeros_like(jax.lax.slice_in_dim(tp, 0, 1, axis=axis)),
                            jax.lax.slice_in_dim(tp_at_ends, 0, n - 1, axis=axis)], axis=axis)
  return rank, tp, group_end, jnp.where(group_end, tp - before, 0)


def _row_sum(x):
  """Sum over the last axis in two levels, so float32 error stays small for N up to 1e6."""
  n = x.shape[-1]
  width = 1024
  if n <= 4 * width:
    return jnp.sum(x, axis=-1)
  pad = (-n) % width
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return jnp.sum(jnp.sum(x.reshape(x.shape[:-1] + (-1, width)), axis=-1), axis=-1)


@functools.partial(jax.jit, static_argnames=("nonneg",))
def precision_sums(scores, labels, nonneg):
  """Per class of a (N, Cb) block: sum over its positives of the precision at their tie group's end.

  Divided by the class's positive count this is sklearn's average_precision_score over the class's
  known images: precision at each distinct threshold weighted by the recall it adds.
  """
  desc, pos = _sort_descending(scores.astype(jnp.float32).T, labels.T, nonneg)
  rank, tp, _, group_pos = _tie_groups(desc, pos, axis=1)
  return _row_sum(group_pos * (tp / rank))


@functools.partial(jax.jit, static_argnames=("nonneg",))
def best_f1_thresholds(scores, labels, nonneg):
  """Per class of a (N, Cb) block: the known score whose `score >= t` rule has the highest F1 on the
  class's known images, that F1, and the class's highest score (known or not).

  Candidates are the distinct known scores (a tied run is predicted whole); among equal F1s the
  highest threshold (fewest predictions) wins, since argmax takes the first in descending order.
  """
  s = scores.astype(jnp.float32).T
  desc, pos = _sort_descending(s, labels.T, nonneg)
  rank, tp, group_end, _ = _tie_groups(desc, pos, axis=1)
  positives = tp[:, -1:]
  # past the known entries (sorted last) tp stays at `positives` while rank grows: F1 only falls there
  f1 = jnp.where(group_end, 2.0 * tp / (rank + positives), -1.0)
  best = jnp.argmax(f1, axis=-1)
  threshold = jnp.take_along_axis(desc, best[:, None], axis=-1)[:, 0]
  return threshold, jnp.max(f1, axis=-1), jnp.max(s, axis=-1)


@functools.partial(jax.jit, static_argnames=("k", "topk_min_score", "nonneg"))
def row_stats(scores, labels, n_valid, threshold, *, k, topk_min_score, nonneg):
  """Everything computable per image of a (B, C) chunk over its known entries; rows >= n_valid are
  padding and count nowhere (as if every entry were unknown).

  Returns per-class integer counts (summed over rows), per-row values (averaged on the host in
  float64) and counts of invalid entries (label codes other than 1/0/-1, non-finite scores) for the
  caller's errors. Only the sort runs along C; the rest works on the (C, B) transpose, where a
  lax.scan over the classes steps through long contiguous rows (XLA:CPU fuses chained associative
  scans badly, ~10x). An unknown entry's score is NaN there: it compares false with everything, so
  it is never predicted, never at the k-th score, never the top one.
  """
  b, c = scores.shape
  valid = jnp.arange(b) < n_valid
  codes = jnp.where(valid[:, None], labels, jnp.int8(-1))
  bad_labels = jnp.sum((codes < -1) | (codes > 1), dtype=jnp.int32)
  s = scores.astype(jnp.float32)
  non_finite = jnp.sum(~jnp.isfinite(s), dtype=jnp.int32)
  desc, pos = _sort_descending(s, codes, nonneg)
  desc, pos = desc.T, pos.T
  known, y = codes.T != -1, codes.T == 1
  s = jnp.where(known, s.T, jnp.nan)
  per_class = functools.partial(jnp.sum, axis=1, dtype=jnp.int32)
  per_image = functools.partial(jnp.sum, axis=0, dtype=jnp.int32)

  # threshold predictions
  pred = s >= threshold
  hit = pred & y
  known_r, true_r, pred_r, hit_r = per_image(known), per_image(y), per_image(pred), per_image(hit)
  f1_den = true_r + pred_r
  f1_r = jnp.where(f1_den == 0, 1.0, 2.0 * hit_r / jnp.maximum(f1_den, 1))
  jac_den = f1_den - hit_r
  jaccard_r = jnp.where(jac_den == 0, 1.0, hit_r / jnp.maximum(jac_den, 1))
  exact_r = (hit_r == true_r) & (hit_r == pred_r)

  # top-k: the k-th largest known score splits the image; its ties go to the lower class indices.
  # With fewer than k known classes the split is -inf: every known class is taken.
  kth = jnp.where(known_r >= k, desc[k - 1], -jnp.inf)
  top = desc[0]
  room = k - per_image(s > kth)

  def by_class(carry, x):
    seen_at_kth, seen_top, top_is_true = carry
    s_c, y_c = x
    at_kth = s_c == kth
    seen_at_kth = seen_at_kth + at_kth
    pred_k = (s_c > kth) | (at_kth & (seen_at_kth <= room))
    if topk_min_score:
      pred_k = pred_k & (s_c >= threshold)
    first_top = (s_c == top) & ~seen_top
    carry = (seen_at_kth, seen_top | first_top, top_is_true | (first_top & y_c))
    return carry, (jnp.sum(pred_k & y_c, dtype=jnp.int32), jnp.sum(pred_k, dtype=jnp.int32))

  zeros = jnp.zeros(b, jnp.int32)
  no = jnp.zeros(b, bool)
  (_, _, top_is_true_r), (tp_k, predicted_k) = jax.lax.scan(by_class, (zeros, no, no), (s, y))

  # ranking: one pass down each image's sorted classes; a tied run counts at its last member, so
  # lrap (the image's AP), mis-ordered pairs and coverage all treat ties as sklearn does. Unknown
  # classes sort last and hold no positive: they add nothing.
  following = jnp.concatenate([desc[1:], jnp.full_like(desc[:1], jnp.nan)])

  def by_rank(carry, x):
    rank, tp, before, lrap_num, wrong_pairs, coverage = carry
    d, d_next, p = x
    tp = tp + p
    run_end = d != d_next
    run_pos = jnp.where(run_end, tp - before, 0)
    carry = (rank + 1, tp, jnp.where(run_end, tp, before), lrap_num + run_pos * (tp / rank),
             wrong_pairs + run_pos * (rank - tp), jnp.where(run_pos > 0, rank, coverage))
    return carry, None

  init = (jnp.int32(1), zeros, zeros, jnp.zeros(b, jnp.float32), zeros, zeros)
  (_, _, _, lrap_num, wrong_pairs, coverage_r), _ = jax.lax.scan(by_rank, init, (desc, following, pos))
  some_but_not_all = (true_r > 0) & (true_r < known_r)
  lrap_r = jnp.where(some_but_not_all, lrap_num / jnp.maximum(true_r, 1), 1.0)
  pairs = true_r * (known_r - true_r)
  ranking_loss_r = jnp.where(some_but_not_all, wrong_pairs / jnp.maximum(pairs, 1), 0.0)

  return dict(
      positives=per_class(y), predicted=per_class(pred), tp=per_class(hit), known=per_class(known),
      predicted_k=predicted_k, tp_k=tp_k, known_r=known_r,
      f1_r=f1_r, jaccard_r=jaccard_r, exact_r=exact_r, lrap_r=lrap_r,
      ranking_loss_r=ranking_loss_r, coverage_r=coverage_r, labelled_r=true_r > 0,
      top_is_true_r=top_is_true_r, bad_labels=bad_labels, non_finite=non_finite)


def label_codes(labels, xp):
  """int8 label codes of any bool/int/float array in numpy or jax.numpy (`xp`): 1, 0, -1 (unknown),
  2 for any other value."""
  if labels.dtype == bool:
    return labels.astype(xp.int8)
  code = xp.where(labels == 1, 1, xp.where(labels == 0, 0, xp.where(labels == -1, -1, 2)))
  return code.astype(xp.int8)
