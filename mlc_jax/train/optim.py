"""Optimizers, learning-rate schedules and freeze masks, all from the config.

Freezing is data: `trainable_filter(unfreeze_blocks, include_top)` is an NNX filter; the train
step splits the model with it and differentiates only the trainable group, so frozen blocks cost
no backward pass and get no optimizer state.

Which parameters train for `unfreeze_blocks` = n:
  0      the head only (the bottleneck set-up, on images);
  1..5   the head, conv blocks 6-n..5, and fc1/fc2 when `model.include_top` (they sit above block 5,
         so any unfrozen conv block implies them: the gradient must flow through them anyway);
  'all'  every parameter.
BatchNorm scale/bias of a block follow their block.
"""
import optax
from flax import nnx

from mlc_jax.config import CHOICES, unfreeze_blocks as parse_unfreeze_blocks
from mlc_jax.errors import UserError
from mlc_jax.models import vgg

OPTIMIZERS = CHOICES["finetune.optimizer"]
SCHEDULES = CHOICES["finetune.schedule"]
# The head stage trains the multi-label head alone.
HEAD = nnx.All(nnx.Param, nnx.PathContains("head"))


def _path_str(path):
  return "/".join(str(p) for p in path)


def trainable_filter(unfreeze_blocks, include_top=False):
  """An NNX filter selecting the trainable nnx.Param of a MultiLabelModel (see module doc)."""
  n = parse_unfreeze_blocks(unfreeze_blocks)
  if n == "all":
    return nnx.Param

  def trainable(path, value):
    keys = [str(p) for p in path]
    if not keys or keys[0] != "backbone":
      return True  # the head always trains
    block = vgg.block_of(_path_str(path[1:]))
    if block is None:
      return False
    if block == 6:
      return include_top and n >= 1
    return block > 5 - n

  return nnx.All(nnx.Param, trainable)


def schedule(stage_config, steps_per_epoch):
  """Learning rate as a function of the optimizer step (constant, cosine or step; warmup)."""
  lr = float(stage_config.learning_rate)
  name = stage_config.get("schedule", "constant")
  if name not in SCHEDULES:
    raise UserError(f"schedule={name!r} is not one of {SCHEDULES}")
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


def make(stage_config, steps_per_epoch):
  """config.head or config.finetune -> optax GradientTransformation.

  RMSprop follows Keras (rho 0.9, epsilon 1e-7 outside the square root) so the proposal's
  Keras numbers carry over. weight_decay is decoupled for adamw and an L2 term otherwise;
  grad_clip clips the global norm of the trainable gradient only.
  """
  name = stage_config.optimizer
  if name not in OPTIMIZERS:
    raise UserError(f"optimizer={name!r} is not one of {OPTIMIZERS}")
  lr = schedule(stage_config, steps_per_epoch)
  momentum = float(stage_config.get("momentum", 0.9))
  weight_decay = float(stage_config.get("weight_decay", 0.0))
  clip = float(stage_config.get("grad_clip", 0.0))
  if name == "sgd":
    nesterov = bool(stage_config.get("nesterov", False))
    tx = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
  elif name == "adam":
    tx = optax.adam(lr)
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=weight_decay)
  else:
    tx = optax.rmsprop(lr, decay=0.9, eps=1e-7, eps_in_sqrt=False)
  parts = []
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if weight_decay > 0 and name != "adamw":
    parts.append(optax.add_decayed_weights(weight_decay))
  return optax.chain(*parts, tx) if parts else tx
