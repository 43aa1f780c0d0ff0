"""Orbax checkpoints: one CheckpointManager per stage under WORKDIR/checkpoints/STAGE.

Each step holds two items: 'model', the pure dict of the FULL MultiLabelModel state (backbone +
head, parameters and batch statistics), and 'train' (optimizer state, step, epoch, rng, running
sums). Orbax writes a step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous step intact. A stage is done only when its DONE file exists,
written after its last save has finished.
"""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as ocm

from mlc_jax.errors import UserError

STAGES = ("head", "finetune")    # the stages that write checkpoints, in training order
BEST_METRICS = {"val_loss": "min", "val_mAP": "max"}
# What a checkpoint keeps of the model: parameters and BatchNorm statistics, not RNG streams.
SAVED = nnx.Any(nnx.Param, nnx.BatchStat)


def stage_dir(workdir, stage):
  """WORKDIR/checkpoints/STAGE."""
  return pathlib.Path(workdir).resolve() / "checkpoints" / stage


def is_done(workdir, stage):
  """True when the stage finished (its final checkpoint is committed)."""
  return (stage_dir(workdir, stage) / "DONE").exists()


def mark_done(workdir, stage, info=None):
  """Marks a stage finished; call only after Manager.wait() returned."""
  path = stage_dir(workdir, stage) / "DONE"
  tmp = path.with_suffix(f".tmp{jax.process_index()}")  # own name per process: no rename race
  tmp.write_text(json.dumps(info or {}))
  os.replace(tmp, path)  # atomic: a kill leaves either no DONE or a whole one


def _detach(x):
  return jnp.array(x, copy=True) if isinstance(x, jax.Array) else x


class Manager:
  """A thin CheckpointManager wrapper: keep the latest (resume) and the best (by best_metric)."""

  def __init__(self, workdir, stage, best_metric="val_loss", *, read_only=False):
    if best_metric not in BEST_METRICS:
      raise UserError(f"checkpoint.best_metric={best_metric!r} is not one of {tuple(BEST_METRICS)}")
    mode = BEST_METRICS[best_metric]
    self.best_metric = best_metric
    self.directory = stage_dir(workdir, stage)
    best_fn = lambda metrics: metrics[best_metric]
    policy = ocm.AnyPreservationPolicy([
        ocm.LatestN(n=1),
        # BestN keeps the highest best_fn values; reverse=True keeps the lowest (a loss).
        ocm.BestN(get_metric_fn=best_fn, reverse=(mode == "min"), n=1,
                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=mode, preservation_policy=policy, read_only=read_only,
        create=not read_only, enable_async_checkpointing=not read_only)
    try:
      self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("model", "train"))
    except Exception as e:  # a damaged directory: say which one
      raise UserError(f"cannot read checkpoints in {self.directory}: {e}") from e

  def latest_step(self):
    """The newest committed step, or None."""
    return self._mngr.latest_step()

  def best_step(self):
    """The step with the best validation metric (the latest when none has metrics), or None."""
    return self._mngr.best_step()

  def step_for(self, which):
    """'best' or 'latest' -> a step number (or None)."""
    if which not in ("best", "latest"):
      raise UserError(f"which={which!r} must be 'best' or 'latest'")
    return self.best_step() if which == "best" else self.latest_step()

  def save(self, step, model_state, train_state, metrics=None):
    """Starts an asynchronous save of step; metrics (with best_metric) rank it for 'best'."""
    # The train step donates its state: hand Orbax's background writer copies the step cannot reuse.
    model_state, train_state = jax.tree.map(_detach, (model_state, train_state))
    args = ocp.args.Composite(model=ocp.args.StandardSave(model_state),
                              train=ocp.args.StandardSave(train_state))
    self._mngr.save(step, args=args, metrics=metrics, force=True)

  def restore(self, step, abstract_model=None, abstract_train=None):
    """Restores the named items of step against abstract targets -> dict item -> pytree."""
    items = {}
    if abstract_model is not None:
      items["model"] = ocp.args.StandardRestore(abstract_model)
    if abstract_train is not None:
      items["train"] = ocp.args.StandardRestore(abstract_train)
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # truncated files, a wrong model shape: one clear message
      raise UserError(
          f"checkpoint {self.directory / str(step)} is damaged or does not fit the model of "
          f"config.json ({type(e).__name__}: {str(e)[:300]}); delete it or retrain") from e

  def wait(self):
    """Blocks until every started save is committed."""
    self._mngr.wait_until_finished()

  def close(self):
    """Waits for pending saves and releases the manager."""
    self._mngr.close()


def abstract_state(model, sharding=None):
  """The ShapeDtypeStruct pure dict of what a checkpoint keeps of model.

  Each leaf restores with `sharding`, else with the sharding of model's own array (replicated
  over the mesh in training), else onto the first local device.
  """
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  def leaf(x):
    s = sharding or getattr(x, "sharding", None) or default
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(leaf, model_state(model))


def abstract_of(tree):
  """Restore target for a pytree: jax arrays -> ShapeDtypeStruct with their sharding; numpy kept."""
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(leaf, tree)


def model_state(model):
  """The pure dict of model's parameters and batch statistics (the 'model' item)."""
  return nnx.to_pure_dict(nnx.state(model, SAVED))


def load_model_state(model, pure):
  """Writes a restored 'model' pure dict into model (in place)."""
  state = nnx.state(model, SAVED)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


def read_config(workdir):
  """WORKDIR/config.json -> ConfigDict (UserError when missing)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{path} not found: {workdir} is not a training workdir "
                    "(run --mode=train first, or pass the right --workdir)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def read_labels(workdir):
  """WORKDIR/labels.txt -> list of label names."""
  path = pathlib.Path(workdir) / "labels.txt"
  if not path.exists():
    raise UserError(f"{path} not found: the workdir is incomplete; rerun --mode=train")
  return path.read_text().splitlines()


def has_checkpoints(workdir, stage):
  """True when stage has at least one committed checkpoint step."""
  d = stage_dir(workdir, stage)
  return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def final_stage_dir(workdir):
  """The checkpoint directory of the last stage that has a checkpoint (finetune, else head)."""
  for stage in reversed(STAGES):
    if has_checkpoints(workdir, stage):
      return stage_dir(workdir, stage)
  raise UserError(f"no checkpoints in {pathlib.Path(workdir) / 'checkpoints'}: "
                  "train first with --mode=train (or pass the right --workdir)")


def restore_model(workdir, which="best"):
  """Rebuilds the trained model of a workdir -> (config, labels, model).

  The model comes from config.json through models.build_model; its 'model' item is restored
  from the last stage with checkpoints (finetune, else head), the best or the latest step.
  """
  from mlc_jax import models
  config = read_config(workdir)
  labels = read_labels(workdir)
  directory = final_stage_dir(workdir)
  best = config.get("checkpoint", {}).get("best_metric", "val_loss")
  mngr = Manager(workdir, directory.name, best, read_only=True)
  step = mngr.step_for(which)
  if step is None:
    raise UserError(f"no complete checkpoint in {directory}; train again with --mode=train")
  model = models.build_model(config, len(labels), rngs=nnx.Rngs(0))
  restored = mngr.restore(step, abstract_model=abstract_state(model))
  load_model_state(model, restored["model"])
  return config, labels, model
