"""What a training stage carries from step to step: one TrainState value, and where it lives.

A stage splits the full model with its filters into `trainable` (the parameters it differentiates),
`stats` (the batch statistics it updates) and the frozen rest, which the steps take as a constant.
The train step maps one TrainState to the next; resume, checkpoints, EMA and sharding act on that
value.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mlc_jax import parallel


@flax.struct.dataclass
class TrainState:
  """The values a train step updates (donated to it, returned new)."""
  trainable: Any   # nnx.State: parameters the stage trains
  stats: Any       # nnx.State: batch statistics the stage updates (empty when none)
  opt_state: Any   # the optimizer's state over `trainable`
  loss_sum: Any    # float32 (): training loss summed over this epoch's steps so far
  loss_steps: Any  # int32 (): the steps in loss_sum
  ema: Any = None  # {'trainable', 'stats'}: their exponential moving average; None when off

  def ema_weights(self):
    """This state with the EMA in place of the trained weights (for validation)."""
    return self.replace(trainable=self.ema["trainable"], stats=self.ema["stats"])


def create(trainable, stats, tx, *, loss_sum=0.0, loss_steps=0, opt_state=None, ema=False):
  """A TrainState with a fresh optimizer state (or the given one) and running sums; ema=True
  starts the moving average at the current weights."""
  return TrainState(trainable=trainable, stats=stats,
                    opt_state=tx.init(trainable) if opt_state is None else opt_state,
                    loss_sum=jnp.asarray(loss_sum, jnp.float32),
                    loss_steps=jnp.asarray(loss_steps, jnp.int32),
                    ema={"trainable": trainable, "stats": stats} if ema else None)


def layout(config, mesh, tx, trainable, stats, *, ema=False):
  """The TrainState of shardings (config.param_sharding) for these trainable and stats groups."""
  repl = parallel.replicated(mesh)
  weights = {"trainable": parallel.state_shardings(trainable, mesh, config),
             "stats": parallel.state_shardings(stats, mesh, config)}
  return TrainState(trainable=weights["trainable"], stats=weights["stats"],
                    opt_state=parallel.state_shardings(jax.eval_shape(tx.init, trainable), mesh,
                                                       config),
                    loss_sum=repl, loss_steps=repl, ema=weights if ema else None)


def place(trainable, stats, tx, shardings, *, opt_state=None, loss_sum=0.0, loss_steps=0,
          ema=None):
  """A TrainState placed on the mesh under `shardings` (the optimizer state initialised there).

  ema: the moving average's {'trainable', 'stats'}; None starts it at the weights (when the
  layout has one).
  """
  trainable = parallel.place(trainable, shardings.trainable)
  stats = parallel.place(stats, shardings.stats)
  if opt_state is None:
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable)
  sums = parallel.place((np.float32(loss_sum), np.int32(loss_steps)),
                        (shardings.loss_sum, shardings.loss_steps))
  if shardings.ema is not None:
    # A copy: the step donates the state, and the average must not share buffers with the weights.
    start = {"trainable": trainable, "stats": stats} if ema is None else ema
    copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=shardings.ema)
    ema = copy(parallel.place(start, shardings.ema))
  return TrainState(trainable=trainable, stats=stats, opt_state=opt_state, loss_sum=sums[0],
                    loss_steps=sums[1], ema=ema)
