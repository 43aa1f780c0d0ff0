"""Inference: restore a run (the one restore path), the Classifier, the predict CLI and export.

Nothing here imports the training code: the checkpoint format lives below both (mlc_jax.checkpoints).
"""
