"""Pure training and inference steps (functional NNX: split state in, new state out).

`make_*` wrap each step in one jax.jit with donated state and explicit shardings over the
mesh's 'data' axis: batches split; parameters and optimizer state replicated, or split as
`layout` says (train.state_layout; param_sharding='fsdp'), in which case the step
computes with gathered parameters and XLA reduce-scatters the gradient to the shards. A finetune step
differentiates only the trainable group of nnx.split(model, trainable_filter, BatchStat, ...),
so frozen blocks cost no backward pass and gradient clipping sees only trainable gradients.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mlc_jax import sharding


def activation(logits, name):
  """Head logits -> scores: sigmoid (multi-label) or softmax (single-label comparison)."""
  return jax.nn.softmax(logits, axis=-1) if name == "softmax" else jax.nn.sigmoid(logits)


def _accumulate(sums, loss):
  return {"loss_sum": sums["loss_sum"] + loss, "steps": sums["steps"] + 1}


def zero_sums():
  """The running training-loss sums a step carries (fetched once per logging interval)."""
  return {"loss_sum": jnp.zeros((), jnp.float32), "steps": jnp.zeros((), jnp.int32)}


def finetune_step(mesh, graphdef, tx, loss_fn, augment_fn, trainable, stats, frozen, opt_state,
                  sums, batch, base_key, step):
  """One SGD step on an image batch: augment on device, forward, grad w.r.t. trainable only."""
  key = jax.random.fold_in(base_key, step)
  augment_key, dropout_key = jax.random.split(key)
  images = batch["image"]
  images = augment_fn(images, augment_key) if augment_fn else images.astype(jnp.float32)

  def loss_of(trainable, stats):
    # stats enter as an argument so BatchNorm updates them at this trace level.
    whole, fixed = sharding.gathered((trainable, frozen), mesh)  # a no-op unless fsdp split them
    model = nnx.merge(graphdef, whole, stats, fixed, copy=True)
    logits = model(images, train=True, rngs=nnx.Rngs(dropout=dropout_key))
    loss = loss_fn(logits, batch["labels"], batch["mask"])
    return loss, nnx.state(model, nnx.BatchStat)

  (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable, stats)
  updates, opt_state = tx.update(grads, opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  return trainable, stats, opt_state, _accumulate(sums, loss)


def make_finetune_step(mesh, graphdef, tx, loss_fn, augment_fn, layout=None):
  """jit(finetune_step) donating trainable, stats, opt_state and sums.

  layout: {'trainable', 'stats', 'frozen', 'opt_state'} -> sharding trees (train.state_layout);
  None replicates all four.
  """
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  layout = layout or {}
  t, s, f, o = (layout.get(k, repl) for k in ("trainable", "stats", "frozen", "opt_state"))
  fn = functools.partial(finetune_step, mesh, graphdef, tx, loss_fn, augment_fn)
  return jax.jit(fn, donate_argnums=(0, 1, 3, 4),
                 in_shardings=(t, s, f, o, repl, data, repl, repl),
                 out_shardings=(t, s, o, repl))


def head_step(mesh, graphdef, tx, loss_fn, params, rest, opt_state, sums, features, labels, index,
              base_key, step):
  """One step of the head on cached bottleneck features gathered on device by index."""
  dropout_key = jax.random.fold_in(base_key, step)
  x, y = features[index], labels[index]

  def loss_of(params):
    head = nnx.merge(graphdef, sharding.gathered(params, mesh), rest)
    logits = head(x, train=True, rngs=nnx.Rngs(dropout=dropout_key))
    return loss_fn(logits, y)

  loss, grads = jax.value_and_grad(loss_of)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, _accumulate(sums, loss)


def make_head_step(mesh, graphdef, tx, loss_fn, layout=None):
  """jit(head_step) donating params, opt_state and sums; features stay replicated on device.

  layout: {'trainable', 'opt_state'} -> sharding trees (train.state_layout); None replicates.
  """
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  layout = layout or {}
  p, o = (layout.get(k, repl) for k in ("trainable", "opt_state"))
  fn = functools.partial(head_step, mesh, graphdef, tx, loss_fn)
  return jax.jit(fn, donate_argnums=(0, 2, 3),
                 in_shardings=(p, repl, o, repl, repl, repl, data, repl, repl),
                 out_shardings=(p, o, repl))


def predict_step(graphdef, state, images, activation_name):
  """Scores of a model (or a head on features) in inference mode."""
  model = nnx.merge(graphdef, state)
  return activation(model(images, train=False), activation_name)


def make_predict_step(mesh, graphdef, activation_name="sigmoid"):
  """jit(predict_step): state replicated, inputs and scores split over 'data'."""
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  fn = functools.partial(predict_step, graphdef, activation_name=activation_name)
  return jax.jit(fn, in_shardings=(repl, data), out_shardings=data)


def features_step(graphdef, state, images):
  """Bottleneck features of the frozen backbone (no augmentation, inference mode)."""
  return nnx.merge(graphdef, state)(images, train=False)


def make_features_step(mesh, graphdef):
  """jit(features_step)."""
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  return jax.jit(functools.partial(features_step, graphdef), in_shardings=(repl, data),
                 out_shardings=data)


def loss_step(mesh, graphdef, states, inputs, labels, mask, loss_fn, activation_name):
  """(scores, loss sum over valid images) for validation; states: the split model's groups."""
  model = nnx.merge(graphdef, *sharding.gathered(states, mesh))
  logits = model(inputs, train=False)
  n = jnp.sum(mask.astype(jnp.float32))
  return activation(logits, activation_name), loss_fn(logits, labels, mask) * n


def make_loss_step(mesh, graphdef, loss_fn, activation_name="sigmoid"):
  """jit(loss_step) for validation batches; the states keep the training step's layout."""
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  fn = functools.partial(loss_step, mesh, graphdef, loss_fn=loss_fn,
                         activation_name=activation_name)
  return jax.jit(fn, in_shardings=(None, data, data, data), out_shardings=(data, repl))
