"""Training: the stages (features, head, finetune), their TrainState, pure steps and the epoch loop.

Nothing here evaluates on the test split: mlc_jax.runner runs the stages, then mlc_jax.eval.
"""
