"""Optimizers, learning-rate schedules and parameter groups, all from the config.

Freezing and learning rates are data (big_vision's idea): `finetune.param_groups` is an ordered
tuple of (regex over '/'-joined parameter paths, None | {'lr_mult': m, 'wd_mult': w}). A parameter
takes the first group whose regex matches its whole path ('backbone/block5_conv1/kernel',
'head/fc1/bias'); None freezes it; a dict scales the stage's learning rate and weight decay for
it; parameters no group matches train at the stage's defaults. The optimizer is built with optax
from the groups (one optax.multi_transform branch per distinct dict), and frozen parameters stay
outside the differentiated set: no backward pass, no optimizer state, and gradient clipping and
weight decay see only trainable parameters.

`finetune.unfreeze_blocks` = n is shorthand, expanded into groups placed after param_groups:
  'all'  nothing frozen;
  0..5   ('backbone/block[1-(T-n)]_.*', None): conv blocks 1..T-n frozen (with their batch norm),
         T the backbone's top block (model.blocks, 5 unless the bottleneck is tapped lower);
         for n = 0 also ('backbone/(fc1|fc2)/.*', None): VGG's top sits above block 5, so any
         unfrozen conv block trains fc1/fc2 too (the gradient must flow through them anyway).
The head always trains unless a group says otherwise. ML-GCN's recipe (the classifier at 10x):
`--config.finetune.param_groups="(('head/.*', {'lr_mult': 10.0}),)"`.

The optimizers follow Keras 3's update rules exactly (tests compare them with the installed
keras.optimizers): SGD accumulates momentum of the lr-scaled gradient (m = mu m - lr g); RMSprop
puts epsilon inside the square root; Adam/AdamW use Keras's bias correction with epsilon added to
sqrt(v) (not to sqrt(v_hat)); weight decay is decoupled for every optimizer, as Keras's
`weight_decay` (p -= lr * wd * p, with the parameters before the step).
"""
import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mlc_jax.config import check_param_groups, unfreeze_blocks as parse_unfreeze_blocks

KERAS_EPSILON = 1e-7      # Keras 3's default epsilon for Adam, AdamW and RMSprop
RMSPROP_RHO = 0.9         # Keras 3's default rho
# The head stage trains the multi-label head alone.
HEAD = nnx.All(nnx.Param, nnx.PathContains("head"))


def unfreeze_groups(unfreeze_blocks, top=5):
  """The parameter groups `finetune.unfreeze_blocks` stands for (see the module doc); `top`: the
  backbone's last conv block (model.blocks)."""
  n = parse_unfreeze_blocks(unfreeze_blocks)
  if n == "all":
    return ()
  groups = ((f"backbone/block[1-{top - n}]_.*", None),) if n < top else ()
  if n == 0:
    groups += (("backbone/(fc1|fc2|predictions)/.*", None),)
  return groups


class ParamGroups:
  """A stage's resolved groups: which parameters train, and each one's lr and wd multipliers."""

  def __init__(self, groups):
    self.groups = check_param_groups(groups) + [(re.compile(".*"), {})]

  @classmethod
  def for_stage(cls, stage_config, top=5):
    """finetune.param_groups, then the expansion of finetune.unfreeze_blocks (below block `top`)."""
    return cls(tuple(stage_config.get("param_groups", ()))
               + unfreeze_groups(stage_config.get("unfreeze_blocks", "all"), top))

  def spec(self, path):
    """None (frozen) or {'lr_mult', 'wd_mult'} of a '/'-joined parameter path."""
    return next(spec for regex, spec in self.groups if regex.fullmatch(path))

  def label(self, path):
    """'frozen', or a name shared by every parameter with the same multipliers."""
    spec = self.spec(path)
    return "frozen" if spec is None else _label(spec)

  def trainable(self):
    """The NNX filter of the parameters that train (the stage differentiates only these)."""
    return nnx.All(nnx.Param, lambda path, _: self.spec(path_string(path)) is not None)

  def labels(self, params):
    """The pytree of labels of a trainable state (an nnx.State), for optax.multi_transform."""
    return jax.tree_util.tree_map_with_path(lambda path, _: self.label(tree_path_string(path)),
                                            params)


def _label(spec):
  return f"lr{spec.get('lr_mult', 1.0):g}_wd{spec.get('wd_mult', 1.0):g}"


def path_string(path):
  """An NNX path ('backbone', 'block1_conv1', 'kernel') -> 'backbone/block1_conv1/kernel'."""
  return "/".join(str(p) for p in path)


def tree_path_string(path):
  """A jax tree path of an nnx.State leaf -> its '/'-joined parameter path."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def schedule(stage_config, steps_per_epoch):
  """Learning rate as a function of the optimizer step (constant, cosine or step; warmup)."""
  lr = float(stage_config.learning_rate)
  name = stage_config.get("schedule", "constant")
  total = max(1, int(stage_config.epochs) * steps_per_epoch)
  warmup = int(stage_config.get("warmup_epochs", 0) * steps_per_epoch)
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
  else:  # step: x0.1 at half and at three quarters of training (the classic ImageNet recipe)
    main = optax.piecewise_constant_schedule(
        lr, {max(1, (total - warmup) // 2): 0.1, max(2, 3 * (total - warmup) // 4): 0.1})
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _scale_by_keras_adam(b1=0.9, b2=0.999, eps=KERAS_EPSILON):
  """Keras 3's Adam direction: m * sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps)."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    alpha = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    direction = jax.tree.map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
    return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def _decoupled_weight_decay(weight_decay, learning_rate):
  """Adds -lr_t * wd * p to the update (Keras's weight_decay, with the parameters before the step)."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    lr = learning_rate(state.count)
    updates = jax.tree.map(lambda u, p: u - lr * weight_decay * p, updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def _optimizer(stage_config, learning_rate, weight_decay):
  """One optimizer (Keras 3's rule for stage_config.optimizer) at this schedule and decay."""
  name = stage_config.optimizer
  if name == "sgd":
    momentum = float(stage_config.get("momentum", 0.9))
    parts = [optax.scale_by_learning_rate(learning_rate)]
    if momentum:  # Keras: m = momentum * m - lr * g; nesterov adds momentum * m - lr * g
      parts.append(optax.trace(decay=momentum, nesterov=bool(stage_config.get("nesterov", False))))
  elif name in ("adam", "adamw"):
    parts = [_scale_by_keras_adam(), optax.scale_by_learning_rate(learning_rate)]
  else:
    parts = [optax.scale_by_rms(decay=RMSPROP_RHO, eps=KERAS_EPSILON, eps_in_sqrt=True),
             optax.scale_by_learning_rate(learning_rate)]
  if weight_decay > 0:
    parts.append(_decoupled_weight_decay(weight_decay, learning_rate))
  return optax.chain(*parts)


def make(stage_config, steps_per_epoch, groups=None):
  """config.head or config.finetune (+ its ParamGroups) -> optax GradientTransformation over the
  trainable parameters (an nnx.State).

  grad_clip clips the global norm of the trainable gradient before any group's optimizer;
  finetune.accumulate_steps = k > 1 wraps it all in optax.MultiSteps (k micro-batches, one
  update with their mean gradient; the schedule counts updates).
  """
  k = max(1, int(stage_config.get("accumulate_steps", 1)))
  lr = schedule(stage_config, max(1, steps_per_epoch // k))
  weight_decay = float(stage_config.get("weight_decay", 0.0))
  scaled = lambda spec: _optimizer(
      stage_config, lambda step: lr(step) * spec.get("lr_mult", 1.0),
      weight_decay * spec.get("wd_mult", 1.0))
  distinct = {} if groups is None else {_label(s): s for _, s in groups.groups if s is not None}
  if set(distinct) <= {_label({})}:
    tx = scaled({})  # every trainable parameter at the defaults: one optimizer
  else:
    tx = optax.multi_transform({label: scaled(spec) for label, spec in distinct.items()},
                               groups.labels)
  clip = float(stage_config.get("grad_clip", 0.0))
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx
