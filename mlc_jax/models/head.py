"""The multi-label head on bottleneck features: fc1, fc2, ... (ReLU, dropout) then predictions (logits)."""
import jax
import jax.numpy as jnp
from flax import nnx

from mlc_jax.models.backbone import host_initializer


def sizes(hidden):
  """The hidden layers' sizes as a tuple: (N1, N2, ...) as given, N -> (N,), 0 or () -> ()
  (config.head.hidden is checked by config.validate before a model is built)."""
  if isinstance(hidden, (tuple, list)):
    return tuple(int(v) for v in hidden)
  return (int(hidden),) if hidden else ()


class Head(nnx.Module):
  """Dense head: hidden layers `fc1`, `fc2`, ... (each ReLU then dropout) and `predictions`.

  hidden: the layers' sizes, e.g. (1024,) (the proposal's head) or (512, 256); () or 0 keeps
  `predictions` only; an int N means (N,). Dropout draws from the `rngs` passed at call time, so
  a training step is deterministic in its key.
  """

  def __init__(self, in_features, num_classes, *, hidden=(1024,), dropout=0.5, rngs=None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.sizes = sizes(hidden)  # a tuple: static in NNX
    width = in_features
    for i, units in enumerate(self.sizes, 1):
      setattr(self, f"fc{i}", nnx.Linear(width, units, kernel_init=host_initializer("glorot"),
                                         rngs=rngs))
      width = units
    if self.sizes:
      self.dropout = nnx.Dropout(float(dropout))
    self.predictions = nnx.Linear(width, num_classes, kernel_init=host_initializer("glorot"),
                                  rngs=rngs)

  def __call__(self, features, *, train=False, rngs=None):
    """features (N, D) -> logits (N, C) float32; train=True applies dropout with `rngs`."""
    x = jnp.asarray(features, jnp.float32)
    for i in range(1, len(self.sizes) + 1):
      x = jax.nn.relu(getattr(self, f"fc{i}")(x))
      x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self.predictions(x)
