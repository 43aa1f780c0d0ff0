"""Multi-label metrics with the literature's definitions and sklearn's numbers.

`compute(scores, labels)` returns every metric at once; `per_class_table` and `tune_thresholds`
serve reports and threshold selection (all in mlc_jax.metrics.multilabel, over the jitted kernels
of mlc_jax.metrics.kernels). Evaluation and validation gather a split's scores with
mlc_jax.parallel.gather_split (padding dropped) and call `compute` once on them.
"""
from mlc_jax.metrics.multilabel import compute, per_class_table, tune_thresholds

__all__ = ["compute", "per_class_table", "tune_thresholds"]
