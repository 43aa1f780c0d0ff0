"""mlc_jax: multi-label image classifiers fine-tuned from ImageNet VGG, in JAX/Flax.

Public API: `load`, `load_imagenet`, `Classifier`, `__version__`. Everything else is reached
through its module (`mlc_jax.metrics.compute`, ...).
"""

__version__ = "0.1.0"
__all__ = ["Classifier", "load", "load_imagenet", "__version__"]


def __getattr__(name):
  # Imported lazily: `import mlc_jax` stays cheap and does not start TensorFlow or JAX.
  if name in ("Classifier", "load_imagenet"):
    from mlc_jax import classifier
    return getattr(classifier, name)
  if name == "load":
    from mlc_jax import predict
    return predict.load
  raise AttributeError(f"module 'mlc_jax' has no attribute {name!r}")
