"""The multi-label head on bottleneck features: fc1 (ReLU, dropout) then predictions (logits)."""
import jax
import jax.numpy as jnp
from flax import nnx

from mlc_jax.models.vgg import host_initializer


class Head(nnx.Module):
  """Dense head: `fc1` (hidden units, ReLU, dropout) and `predictions`; hidden=0 keeps `predictions` only.

  Dropout draws from the `rngs` passed at call time, so a training step is deterministic in its key.
  """

  def __init__(self, in_features, num_classes, *, hidden=1024, dropout=0.5, rngs=None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.hidden = int(hidden)
    if self.hidden:
      self.fc1 = nnx.Linear(in_features, self.hidden, kernel_init=host_initializer("glorot"), rngs=rngs)
      self.dropout = nnx.Dropout(float(dropout))
    self.predictions = nnx.Linear(self.hidden or in_features, num_classes,
                                  kernel_init=host_initializer("glorot"), rngs=rngs)

  def __call__(self, features, *, train=False, rngs=None):
    """features (N, D) -> logits (N, C) float32; train=True applies dropout with `rngs`."""
    x = jnp.asarray(features, jnp.float32)
    if self.hidden:
      x = jax.nn.relu(self.fc1(x))
      x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self.predictions(x)
