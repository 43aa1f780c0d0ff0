"""Pure training and evaluation steps (functional NNX: split state in, new state out), jitted once.

A StepSpec says what a stage's step computes: the graph of the full model, the optimizer, the
loss, and its inputs: 'features' (the head alone on cached bottleneck features) or 'image'
(augmentation on the device, then the whole model). The steps take the stage's TrainState, the
frozen rest of the model as a constant, a batch and the random key of the step:

  train_step(spec, state, frozen, batch, base_key, step) -> state
  eval_step(spec, state, frozen, batch) -> (scores, loss summed over the valid images)

`make_*` wrap each in one jax.jit with the state donated and explicit shardings over the mesh's
'data' axis: batches split; parameters and optimizer state replicated, or split as the layout
says (param_sharding='fsdp'), in which case a step computes with gathered parameters and XLA
reduce-scatters the gradient to the shards. Only `trainable` is differentiated, so frozen blocks
cost no backward pass and gradient clipping sees only trainable gradients.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mlc_jax import models, parallel
from mlc_jax.data import augment as augment_lib


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What one stage's steps compute (fixed for the stage; closed over by the jitted steps)."""
  graphdef: Any         # nnx.GraphDef of the full MultiLabelModel
  tx: Any               # optax.GradientTransformation over `trainable`
  loss_fn: Callable     # (logits, labels, mask) -> scalar mean over valid images
  mesh: Any
  inputs: str           # 'features' (the head on batch['features']) or 'image' (the whole model)
  stats_filter: Any     # nnx filter of the batch statistics the step updates
  augment: Any = None   # config.augment for 'image' steps; None = no augmentation
  activation: str = "sigmoid"
  ema_decay: float = 0.0      # > 0: state.ema follows the weights after every optimizer update
  ema_warmup: bool = False    # decay min(ema_decay, (1 + n) / (10 + n)) after n updates
  accumulate_steps: int = 1   # micro-batches per optimizer update (tx is optax.MultiSteps)
  compiler_options: tuple = ()  # parallel.jit_options of the model


def _logits(spec, model, batch, *, train, key=None):
  if spec.inputs == "features":
    rngs = nnx.Rngs(dropout=key) if train else None
    return model.head(batch["features"], train=train, rngs=rngs)
  images = batch["image"]
  if train:
    augment_key, dropout_key = jax.random.split(key)
    images = augment_lib.augment(images, augment_key, spec.augment) if spec.augment is not None \
        else images.astype(jnp.float32)
    return model(images, train=True, rngs=nnx.Rngs(dropout=dropout_key))
  return model(images, train=False)


def train_step(spec, state, frozen, batch, base_key, step):
  """One optimizer step on a batch; the key of step `step` is fold_in(base_key, step)."""
  key = jax.random.fold_in(base_key, step)

  def loss_of(trainable, stats):
    # stats enter as an argument so BatchNorm updates them at this trace level.
    whole, fixed = parallel.gathered((trainable, frozen), spec.mesh)  # a no-op unless fsdp
    model = nnx.merge(spec.graphdef, whole, stats, fixed, copy=True)
    logits = _logits(spec, model, batch, train=True, key=key)
    return spec.loss_fn(logits, batch["labels"], batch["mask"]), nnx.state(model, spec.stats_filter)

  (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.trainable, state.stats)
  updates, opt_state = spec.tx.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  ema = state.ema
  if spec.ema_decay > 0:
    ema = _ema_update(spec, ema, {"trainable": trainable, "stats": stats}, step)
  return state.replace(trainable=trainable, stats=stats, opt_state=opt_state, ema=ema,
                       loss_sum=state.loss_sum + loss, loss_steps=state.loss_steps + 1)


def _ema_update(spec, ema, weights, step):
  """ema * decay + weights * (1 - decay), after each optimizer update (every accumulate_steps)."""
  updates = (step + 1) // spec.accumulate_steps  # optimizer updates done, this one included
  decay = jnp.float32(spec.ema_decay)
  if spec.ema_warmup:
    n = updates.astype(jnp.float32) if hasattr(updates, "astype") else jnp.float32(updates)
    decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  moved = jax.tree.map(lambda e, w: e * decay + w.astype(e.dtype) * (1.0 - decay), ema, weights)
  if spec.accumulate_steps == 1:
    return moved
  updated = (step + 1) % spec.accumulate_steps == 0  # the weights changed at this micro-step
  return jax.tree.map(lambda m, e: jnp.where(updated, m, e), moved, ema)


def eval_step(spec, state, frozen, batch):
  """(scores, loss summed over the valid images) in inference mode, for validation."""
  whole = parallel.gathered((state.trainable, state.stats, frozen), spec.mesh)
  model = nnx.merge(spec.graphdef, *whole)
  logits = _logits(spec, model, batch, train=False)
  n = jnp.sum(batch["mask"].astype(jnp.float32))
  return models.activation(logits, spec.activation), spec.loss_fn(logits, batch["labels"],
                                                                  batch["mask"]) * n


def make_train_step(spec, shardings, frozen_shardings):
  """jit(train_step) donating the state; shardings: the TrainState of shardings (state.layout)."""
  repl, data = parallel.replicated(spec.mesh), parallel.data_sharding(spec.mesh)
  return jax.jit(functools.partial(train_step, spec), donate_argnums=(0,),
                 in_shardings=(shardings, frozen_shardings, data, repl, repl),
                 out_shardings=shardings, compiler_options=dict(spec.compiler_options))


def make_eval_step(spec, shardings, frozen_shardings):
  """jit(eval_step): scores split over 'data', the loss sum replicated."""
  repl, data = parallel.replicated(spec.mesh), parallel.data_sharding(spec.mesh)
  return jax.jit(functools.partial(eval_step, spec),
                 in_shardings=(shardings, frozen_shardings, data), out_shardings=(data, repl),
                 compiler_options=dict(spec.compiler_options))


def features_step(graphdef, state, images):
  """Bottleneck features of the frozen backbone (no augmentation, inference mode)."""
  return nnx.merge(graphdef, state)(images, train=False)


def make_features_step(mesh, graphdef, compiler_options=()):
  """jit(features_step): the backbone replicated, images and features split over 'data';
  compiler_options: parallel.jit_options of the backbone."""
  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(functools.partial(features_step, graphdef), in_shardings=(repl, data),
                 out_shardings=data, compiler_options=dict(compiler_options))
