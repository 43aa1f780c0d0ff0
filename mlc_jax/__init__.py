"""mlc_jax: multi-label image classifiers fine-tuned from ImageNet VGG, in JAX/Flax.

Public API: `load`, `load_imagenet`, `Classifier`, `__version__`. Everything else is reached
through its module (`mlc_jax.metrics.compute`, ...).
"""

import os

# jaxlib 0.12.0.1's XLA:CPU YNNPACK fusion returns inf/NaN for jitted bfloat16 conv->pool->conv chains
# (reproduced with plain lax ops); turning that one fusion off fixes it at no measurable f32 cost.
# Set before JAX starts its CPU backend; GPUs ignore CPU flags.
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type=").strip()

__version__ = "0.1.0"
__all__ = ["Classifier", "load", "load_imagenet", "__version__"]


def __getattr__(name):
  # Lazy: `import mlc_jax` then costs no JAX or TensorFlow start (seconds); the API loads on use.
  if name in ("Classifier", "load_imagenet"):
    from mlc_jax.inference import classifier
    return getattr(classifier, name)
  if name == "load":
    from mlc_jax.inference import restore
    return restore.load
  raise AttributeError(f"module 'mlc_jax' has no attribute {name!r}")
