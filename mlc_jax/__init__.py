"""mlc_jax: multi-label image classifiers fine-tuned from ImageNet VGG, in JAX/Flax.

Public API: `load`, `load_imagenet`, `Classifier`, `__version__`. Everything else is reached
through its module (`mlc_jax.metrics.compute`, ...). Importing the package changes nothing in the
process; a script of your own that trains or evaluates calls `mlc_jax.parallel.setup_process()` first,
as launch.py does.
"""


__version__ = "0.1.0"
__all__ = ["Classifier", "load", "load_imagenet", "__version__"]


def __getattr__(name):
  # Lazy: `import mlc_jax` then costs no JAX or TensorFlow start (seconds); the API loads on use.
  if name in ("Classifier", "load_imagenet"):
    from mlc_jax.inference import classifier
    return getattr(classifier, name)
  if name == "load":
    from mlc_jax.inference import classifier
    return classifier.load
  raise AttributeError(f"module 'mlc_jax' has no attribute {name!r}")
