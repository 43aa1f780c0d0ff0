"""Stands in for Keras in the tests' subprocesses (conftest.subprocess_env puts this folder first on
PYTHONPATH). mlc_jax never imports Keras, but `import tensorflow` eagerly imports an installed Keras
(keras.src.optimizers, ~4 s of a subprocess's start here) and shrugs off an ImportError; only the
in-process tests that compare against Keras need the real one."""
raise ImportError("Keras is hidden from this test subprocess (mlc_jax does not use it)")
