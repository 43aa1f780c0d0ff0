"""Inference: the Classifier (and `mlc_jax.load`, a restored run as one), the predict CLI and export.

Nothing here imports the training code: restoring a run (mlc_jax.restore) and the checkpoint
format (mlc_jax.checkpoints) live below both.
"""
