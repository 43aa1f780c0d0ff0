"""Evaluation: a checkpoint, the ImageNet baseline or a predictions file on a split, scored with
mlc_jax.metrics, written to WORKDIR/eval/SPLIT with report.md, plots and the literature's numbers.

Nothing here trains: mlc_jax.runner calls mlc_jax.eval.evaluate after the stages.
"""
