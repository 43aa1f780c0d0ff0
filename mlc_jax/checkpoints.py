"""Checkpoints: the Orbax format below training, evaluation and inference.

One CheckpointManager per stage under WORKDIR/checkpoints/STAGE. Each step holds the items
'model', the pure dict of the FULL MultiLabelModel state (backbone + head, parameters and batch
statistics), 'train' (optimizer state and the loop's counters) and, when the stage keeps an
exponential moving average of its weights (finetune.ema_decay), 'ema': the full model with
those weights. Orbax writes a step into a
temporary directory and renames it when complete, so a process killed mid-save leaves the previous
steps intact; the two latest steps and the best one are kept, so a damaged latest step (a disk
fault) falls back to the one before it. A stage is done only when its DONE file exists, written
after its last save has finished.

Turning a workdir back into a model is mlc_jax.restore's job; this module knows the format only.
"""
import json
import logging as std_logging
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from mlc_jax import models, workdir as workdir_lib
from mlc_jax.files import disk
from mlc_jax.config import BEST_METRICS, TRAINED_STAGES
from mlc_jax.errors import UserError

SAVED = models.SAVED


def is_done(workdir, stage):
  """True when the stage finished (its final checkpoint is committed)."""
  return (workdir_lib.checkpoint_dir(workdir, stage) / "DONE").exists()


def mark_done(workdir, stage, info=None):
  """Marks a stage finished; call only after Manager.wait() returned (process 0 writes)."""
  if workdir_lib.is_chief():
    workdir_lib.write_text(workdir_lib.checkpoint_dir(workdir, stage) / "DONE",
                           json.dumps(info or {}))


def steps_on_disk(workdir, stage):
  """The committed step numbers of a stage, ascending."""
  d = workdir_lib.checkpoint_dir(workdir, stage)
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def final_stage(workdir):
  """The last trained stage that has a checkpoint (finetune, else head)."""
  for stage in reversed(TRAINED_STAGES):
    if steps_on_disk(workdir, stage):
      return stage
  raise UserError(f"no checkpoints in {workdir_lib.path(workdir, 'checkpoints')}: "
                  "train first with --mode=train (or pass the right --workdir)")


class _QuietOrbax:
  """Drops Orbax's per-save INFO lines (a dozen per checkpoint) and the two warnings every
  read-only restore prints; its other warnings still show."""
  BENIGN = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

  def filter(self, record):
    if "orbax" not in record.pathname:
      return True
    return record.levelno >= 30 and not str(record.msg).startswith(self.BENIGN)


def _closed_loop(value):
  return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


def _orbax_leftover(u):
  """An unraisable exception of an Orbax coroutine abandoned after a failed restore or save (its
  error was raised, and said in one line, already) or of a callback into its closed loop."""
  code = getattr(u.object, "cr_code", None)
  return _closed_loop(u.exc_value) or (code is not None and "orbax" in code.co_filename)


def _quiet_orbax():
  """Installs the filters above, and drops the tracebacks a failed save or restore leaves behind:
  'Event loop is closed' from TensorStore's callbacks (sys.excepthook), the errors of Orbax's
  abandoned coroutines (sys.unraisablehook) and asyncio's 'Future exception was never retrieved'
  of a disk refusal, dozens of each around the one line that says it."""
  if not any(isinstance(f, _QuietOrbax) for f in logging.get_absl_logger().filters):
    logging.get_absl_logger().addFilter(_QuietOrbax())
    logging.get_absl_logger().addFilter(disk.Quiet())  # a full disk: the one line says it
    std_logging.getLogger("asyncio").addFilter(disk.Quiet())
    hook, unraisable = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda kind, value, tb: None if _closed_loop(value) else hook(kind, value, tb)
    sys.unraisablehook = lambda u: None if _orbax_leftover(u) else unraisable(u)


def _join_writers(timeout=60.0):
  """Waits (up to timeout seconds in all) for Orbax's writer threads still running after a failed
  save: close() stops at the first error, and a writer left running when the interpreter shuts
  down fails again with a traceback ('cannot schedule new futures after interpreter shutdown')."""
  deadline = time.monotonic() + timeout
  for t in threading.enumerate():
    if t is not threading.current_thread() and type(t).__module__.startswith("orbax"):
      t.join(max(0.0, deadline - time.monotonic()))


def _detach(x):
  return jnp.array(x, copy=True) if isinstance(x, jax.Array) else x


class Manager:
  """A thin CheckpointManager: keeps the two latest steps (resume) and the best (by best_metric)."""

  def __init__(self, workdir, stage, best_metric="val_loss", *, read_only=False):
    _quiet_orbax()
    self.mode = BEST_METRICS[best_metric]
    self.best_metric = best_metric
    self.directory = workdir_lib.checkpoint_dir(workdir, stage)
    best_fn = lambda metrics: metrics[best_metric]
    policy = ocm.AnyPreservationPolicy([
        ocm.LatestN(n=2),
        # BestN keeps the highest best_fn values; reverse=True keeps the lowest (a loss).
        ocm.BestN(get_metric_fn=best_fn, reverse=(self.mode == "min"), n=1,
                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=self.mode, preservation_policy=policy, read_only=read_only,
        create=not read_only, enable_async_checkpointing=not read_only,
        # a step's directories are made in save() itself: a disk that refuses them is an error of
        # that call, not of a background thread whose siblings then wait minutes for its signal
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    try:
      self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("model", "train", "ema"))
    except Exception as e:  # an unreadable directory: say which one
      raise UserError(f"cannot read checkpoints in {self.directory}: {e}") from e

  def all_steps(self):
    """Committed steps, ascending."""
    return sorted(self._mngr.all_steps())

  def latest_step(self):
    """The newest committed step, or None."""
    return self._mngr.latest_step()

  def best_step(self):
    """The step with the best validation metric (the latest when none has metrics), or None."""
    return self._mngr.best_step()

  def step_for(self, which):
    """'best', 'latest' or a step number -> a committed step (or None)."""
    if isinstance(which, int) and not isinstance(which, bool):
      return which if which in self.all_steps() else None
    if which not in ("best", "latest"):
      raise UserError(f"which={which!r} must be 'best', 'latest' or a step number")
    return self.best_step() if which == "best" else self.latest_step()

  def save(self, step, model_state, train_state, metrics=None, ema=None):
    """Starts an asynchronous save of step; metrics (with best_metric) rank it for 'best'."""
    # The train step donates its state: hand Orbax's background writer copies the step cannot reuse.
    items = {"model": model_state, "train": train_state}
    if ema is not None:
      items["ema"] = ema
    items = jax.tree.map(_detach, items)
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()})
    with self._disk_guard(f"a checkpoint (step {step} or the one before)"):
      self._mngr.save(step, args=args, metrics=metrics, force=True)

  def _disk_guard(self, what):
    """disk.guard for a save: on a full or read-only disk, the manager is given up (its writer
    threads stopped, so no flood follows the one line) and the steps on disk are named."""
    def intact():  # once the writer has stopped: the steps committed by then
      steps = [str(s) for s in steps_on_disk(self.directory.parent.parent, self.directory.name)]
      return (f"the steps saved before ({', '.join(steps)}) are intact" if steps else
              "nothing saved before is lost")
    return disk.guard(what, self.directory, intact, cleanup=self._give_up)

  def _give_up(self):
    self._failed = True
    try:
      self._mngr.close()
    finally:
      _join_writers()

  def restore(self, step, abstract_model=None, abstract_train=None, abstract_ema=None):
    """Restores the named items of step against abstract targets -> dict item -> pytree.

    Raises CheckpointError when the step cannot be read or does not fit the targets.
    """
    items = {}
    for name, target in (("model", abstract_model), ("train", abstract_train),
                         ("ema", abstract_ema)):
      if target is not None:
        items[name] = ocp.args.StandardRestore(target)
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # truncated files, a wrong model shape
      reason = " ".join(str(e).split()).split(" See full TensorStore details")[0][:200]
      raise CheckpointError(self.directory / str(step), f"{type(e).__name__}: {reason}") from e

  def restore_latest_intact(self, abstract_model, abstract_train, abstract_ema=None):
    """(step, restored) of the newest step that restores; (None, None) when there is none.

    A step that fails is renamed STEP.damaged-TIME (kept for inspection, out of Orbax's sight)
    with a warning naming it, and the one before it is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore(step, abstract_model, abstract_train, abstract_ema)
      except CheckpointError as e:
        if workdir_lib.is_chief():
          kept = self.directory / f"{step}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
          os.replace(self.directory / str(step), kept)
          logging.warning("checkpoint %s cannot be restored (%s); kept it as %s and fall back to "
                          "the step before it", e.path, e.reason, kept)
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices(f"mlc_jax damaged checkpoint {step}")
        self._mngr.reload()
    return None, None

  def wait(self):
    """Blocks until every started save is committed (disk.DiskError when one could not be)."""
    if not getattr(self, "_failed", False):
      with self._disk_guard("a checkpoint"):
        self._mngr.wait_until_finished()

  def close(self):
    """Waits for pending saves and releases the manager."""
    if not getattr(self, "_failed", False):
      self._mngr.close()


class CheckpointError(UserError):
  """A checkpoint step that cannot be read, or does not fit the model of config.json."""

  def __init__(self, path, reason):
    self.path, self.reason = path, reason
    super().__init__(f"checkpoint {path} is damaged or does not fit the model config.json "
                     f"describes ({reason}); pass another checkpoint (--which=latest, or the folder of "
                     "another step) or rerun --mode=train, which resumes from the newest intact step")


def abstract_of(tree, sharding=None):
  """Restore target for a pytree: arrays -> ShapeDtypeStruct with `sharding` (else their own)."""
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
      s = sharding or getattr(x, "sharding", None) or default
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
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


def best_metric_of(config, stage):
  """The metric that ranks a stage's checkpoints: checkpoint.best_metric, except that only the
  finetune stage keeps EMA weights (the head stage ranks by the plain metric)."""
  metric = config.checkpoint.get("best_metric", "val_loss")
  return metric if stage == "finetune" else metric.removesuffix("_ema")


def weights_of(config, stage):
  """'ema' when the stage's best checkpoint is the one of its EMA weights, else 'regular'."""
  return "ema" if best_metric_of(config, stage).endswith("_ema") else "regular"
