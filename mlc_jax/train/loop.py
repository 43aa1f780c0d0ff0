"""The epoch loop every trained stage shares: steps, logging, validation, checkpoints, stops.

A stage hands `fit` a Stage: the model, the filters that split it into what trains and what stays
frozen, its optimizer and loss, its inputs and its two feeds (train, val). `fit` builds the
TrainState and the jitted steps from that, and owns everything else:
- resume is exact: a checkpoint stores the optimizer state and counters (epoch, batches done in
  it, the epoch's running loss, early-stopping state); data order comes from (seed, epoch) and the
  batches already done are skipped; step keys are fold_in(base, step). A latest step that cannot
  be restored is set aside and the one before it is used;
- the host syncs with the device once per logging interval, never per step; a non-finite loss is
  caught there, before any checkpoint of the bad state can be written;
- SIGTERM (a preempted machine) or Ctrl-C: a checkpoint of the current step is saved and the run
  ends with one line (errors.Stopped); the same command resumes from it.
"""
import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
import tensorboardX
from absl import logging
from flax import nnx

from mlc_jax import checkpoints, metrics, models, parallel, workdir as workdir_lib
from mlc_jax.config import BEST_METRICS
from mlc_jax.errors import UserError
from mlc_jax.train import progress, state as state_lib, steps

STAGE_INDEX = {"head": 1, "finetune": 2}  # folded into the base key: each stage its own stream


@dataclasses.dataclass
class Run:
  """What every stage of one train_and_evaluate call shares."""
  config: Any
  workdir: str
  source: Any
  labels: list
  mesh: Any
  on_epoch: Any = None  # fn(row) after each epoch's row is logged (train_and_evaluate's doc)
  _writer: Any = None

  @property
  def is_chief(self):
    """Process 0 writes logs, metrics.jsonl and TensorBoard."""
    return jax.process_index() == 0

  def writer(self):
    """The TensorBoard writer (tensorboardX), on process 0 only."""
    if self._writer is None and self.is_chief:
      self._writer = tensorboardX.SummaryWriter(str(pathlib.Path(self.workdir) / "tensorboard"))
    return self._writer

  def close(self):
    """Flushes TensorBoard."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None


@dataclasses.dataclass
class Stage:
  """One trained stage, as data: what `fit` needs and nothing it can derive."""
  name: str             # 'head' or 'finetune'
  config: Any           # its config section: epochs, learning rate and schedule
  model: Any            # the full MultiLabelModel, placed on the mesh
  trainable: Any        # nnx filter: the parameters this stage trains
  stats: Any            # nnx filter: the batch statistics it updates (nnx.Nothing for none)
  inputs: str           # 'features' or 'image' (steps.StepSpec)
  loss_fn: Callable
  tx: Any               # optax.GradientTransformation over the trainable group
  schedule: Callable    # step -> learning rate (logged)
  train: Any            # a feed: .batch_size, .steps_per_epoch, .epoch(epoch, start) -> batches
  val: Any              # a feed: .epoch() -> padded host batches with 'mask'
  augment: Any = None   # config.augment for 'image' inputs
  activation: str = "sigmoid"
  ema_decay: float = 0.0       # > 0: an exponential moving average of the weights, validated too
  ema_warmup: bool = False
  accumulate_steps: int = 1    # micro-batches per optimizer update (tx wrapped in MultiSteps)


@dataclasses.dataclass
class Prepared:
  """A Stage made ready to step: its placed TrainState, frozen rest, layout and jitted steps."""
  spec: Any
  state: Any
  frozen: Any
  shardings: Any
  train_step: Callable  # (state, frozen, device batch, base_key, step) -> state
  eval_step: Callable   # (state, frozen, device batch) -> (scores, loss sum)


def prepare(stage, config, mesh):
  """Splits stage.model by the stage's filters, places the parts as config.param_sharding says,
  and jits the stage's steps over the mesh."""
  graphdef, trainable, stats, frozen = nnx.split(stage.model, stage.trainable, stage.stats, ...)
  shardings = state_lib.layout(config, mesh, stage.tx, trainable, stats, ema=stage.ema_decay > 0)
  frozen_shardings = parallel.state_shardings(frozen, mesh, config)
  spec = steps.StepSpec(graphdef=graphdef, tx=stage.tx, loss_fn=stage.loss_fn, mesh=mesh,
                        inputs=stage.inputs, stats_filter=stage.stats, augment=stage.augment,
                        activation=stage.activation, ema_decay=float(stage.ema_decay),
                        ema_warmup=bool(stage.ema_warmup),
                        accumulate_steps=int(stage.accumulate_steps),
                        compiler_options=parallel.jit_options(stage.model))
  return Prepared(spec=spec, state=state_lib.place(trainable, stats, stage.tx, shardings),
                  frozen=parallel.place(frozen, frozen_shardings), shardings=shardings,
                  train_step=steps.make_train_step(spec, shardings, frozen_shardings),
                  eval_step=steps.make_eval_step(spec, shardings, frozen_shardings))


def run_validation(eval_step, state, frozen, feed, mesh):
  """(mean loss, scores, labels) over the valid (unpadded) images of feed's batches, in the split's
  stored order (parallel.gather_split)."""
  rows = parallel.gather_split(lambda weights, batch: eval_step(weights, frozen, batch), state,
                               feed.epoch(), mesh)
  return rows["total"] / max(1, len(rows["outputs"])), rows["outputs"], rows["labels"]


def track_best(metric, best, bad_epochs, value):
  """(best, bad epochs) after an epoch whose `metric` (a key of BEST_METRICS) was `value`.

  An epoch that does not improve on the best so far (lower for val_loss, higher for val_mAP)
  counts as bad; an improvement resets the count.
  """
  better = value < best if BEST_METRICS[metric] == "min" else value > best
  return (value, 0) if better else (best, bad_epochs + 1)


def _check_finite(value, stage, step, mngr):
  if math.isfinite(value):
    return
  mngr.wait()
  last = mngr.latest_step()
  kept = f"the last good checkpoint ({mngr.directory}/{last}) is intact" if last is not None \
      else "no checkpoint of this stage was written"
  raise UserError(f"{stage}: the training loss became {value} by step {step}; {kept}. Lower "
                  f"{stage}.learning_rate, set finetune.grad_clip, or check the inputs, then run "
                  "--mode=train again to resume")


@dataclasses.dataclass
class Counters:
  """Where a stage stands, saved with each checkpoint (the 'train' item's 'counters')."""
  epoch: int = 0           # epochs done
  batch: int = 0           # batches done in the current epoch
  loss_sum: float = 0.0    # the epoch's training loss so far, summed over loss_steps steps
  loss_steps: int = 0
  best: float = math.inf   # early stopping: the best value of the stage's metric so far,
  bad_epochs: int = 0      # and the epochs since it improved
  stopped: int = 0         # 1 once early stopping ended the stage

  def arrays(self):
    """The checkpoint's form: {name: float64 or int64 numpy scalar}."""
    return {f.name: np.asarray(getattr(self, f.name), np.float64 if f.type is float else np.int64)
            for f in dataclasses.fields(self)}

  @classmethod
  def from_arrays(cls, arrays):
    """The inverse of `arrays` (a restored checkpoint's counters)."""
    return cls(**{f.name: f.type(np.asarray(arrays[f.name])) for f in dataclasses.fields(cls)})


class _Saver:
  """Moves a TrainState into and out of checkpoints: the full model's parameters and batch
  statistics (the state's weights and the frozen rest) plus the train item."""

  def __init__(self, stage, frozen, shardings):
    self.stage, self.frozen, self.shardings = stage, frozen, shardings
    self.filters = (stage.trainable, stage.stats)

  def model_state(self, state):
    """The full model's pure dict with the state's weights (the 'model' item), as
    checkpoints.model_state gives it for the model holding them."""
    merged = nnx.merge_state(state.trainable, state.stats, self.frozen)
    return nnx.to_pure_dict(nnx.filter_state(merged, models.SAVED))

  def ema_state(self, state):
    """The same with the moving average's weights (the 'ema' item), or None without one."""
    return None if state.ema is None else self.model_state(state.ema_weights())

  def save(self, mngr, step, state, counters, metrics=None):
    train = {"opt_state": state.opt_state, "counters": counters.arrays()}
    mngr.save(step, self.model_state(state), train, metrics=metrics, ema=self.ema_state(state))

  def restore(self, mngr, state, counters):
    """(step, state, counters) of the newest intact checkpoint, or (None, state, counters)."""
    abstract_train = {"opt_state": checkpoints.abstract_of(state.opt_state),
                      "counters": counters.arrays()}
    target = checkpoints.abstract_of(self.model_state(state))
    step, restored = mngr.restore_latest_intact(target, abstract_train,
                                                target if state.ema is not None else None)
    if step is None:
      return None, state, counters
    ema = None
    if state.ema is not None:
      checkpoints.load_model_state(self.stage.model, restored["ema"])
      _, ema_trainable, ema_stats, _ = nnx.split(self.stage.model, *self.filters, ...)
      # split's states hold the model's own Variables: copy them before the model item loads
      ema = jax.tree.map(lambda x: x, {"trainable": ema_trainable, "stats": ema_stats})
    checkpoints.load_model_state(self.stage.model, restored["model"])
    _, trainable, stats, _ = nnx.split(self.stage.model, *self.filters, ...)
    c = Counters.from_arrays(restored["train"]["counters"])
    state = state_lib.place(trainable, stats, self.stage.tx, self.shardings,
                            opt_state=restored["train"]["opt_state"], loss_sum=c.loss_sum,
                            loss_steps=c.loss_steps, ema=ema)
    return step, state, c


def _reset_sums(state, shardings):
  zero = parallel.place((np.float32(0), np.int32(0)), (shardings.loss_sum, shardings.loss_steps))
  return state.replace(loss_sum=zero[0], loss_steps=zero[1])


def _summed_loss(state):
  host = jax.device_get((state.loss_sum, state.loss_steps))  # the one host sync of an interval
  return float(host[0]) / max(1, int(host[1])), float(host[0]), int(host[1])


class _Fit:
  """One stage being fitted: its checkpoints, prepared steps, TrainState and Counters."""

  def __init__(self, run, stage):
    config, name = run.config, stage.name
    self.run, self.stage, self.name = run, stage, name
    self.best_metric = checkpoints.best_metric_of(config, name)
    self.mngr = checkpoints.Manager(run.workdir, name, self.best_metric)
    self.spe, self.epochs = stage.train.steps_per_epoch, int(stage.config.epochs)
    self.p = prepare(stage, config, run.mesh)
    self.saver = _Saver(stage, self.p.frozen, self.p.shardings)
    start = Counters(best=math.inf if BEST_METRICS[self.best_metric] == "min" else -math.inf)
    latest, self.state, self.c = self.saver.restore(self.mngr, self.p.state, start)
    if latest is not None:
      logging.info("%s: resuming from step %d (epoch %d, batch %d)", name, latest,
                   self.c.epoch + 1, self.c.batch)
    self.step = self.c.epoch * self.spe + self.c.batch
    if run.is_chief:
      workdir_lib.truncate_metrics(run.workdir, name, self.step if latest is not None else -1)
    self.base_key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), STAGE_INDEX[name])
    self.log_every = max(1, int(config.log_every_steps))
    self.every = int(config.checkpoint.every_steps)
    self.patience = int(config.early_stopping_patience)

  @property
  def running(self):
    return self.c.epoch < self.epochs and not self.c.stopped

  def save(self, metrics=None):
    self.saver.save(self.mngr, self.step, self.state, self.c, metrics=metrics)

  def train_epoch(self, stop):
    """The epoch's remaining train steps, with their logging, mid-epoch checkpoints and stop
    requests -> (images this epoch, images skipped on resume)."""
    run, stage, name, spe, c = self.run, self.stage, self.name, self.spe, self.c
    epoch, start = c.epoch, c.batch
    bar = progress.Progress(name, epoch, self.epochs, spe, start, run.is_chief)
    # Images of this epoch, counted from the global batches; a resume counts the skipped ones.
    images = skipped = start * stage.train.batch_size
    t_log, images_log = time.time(), images
    done = start
    for batch in parallel.prefetch(stage.train.epoch(epoch, start), run.mesh):
      self.state = self.p.train_step(self.state, self.p.frozen, batch, self.base_key, self.step)
      self.step, done = self.step + 1, done + 1
      images += batch["mask"].shape[0]  # the global batch: every image once
      mid_save = self.every > 0 and self.step % self.every == 0 and done < spe
      synced = done % self.log_every == 0 or done == spe or mid_save
      if synced:
        loss, loss_sum, loss_steps = _summed_loss(self.state)
        _check_finite(loss, name, self.step, self.mngr)
        now = time.time()
        bar.update(done, loss, (images - images_log) / max(now - t_log, 1e-9))
        t_log, images_log = now, images
        if run.is_chief and run.writer() is not None:
          run.writer().add_scalar(f"{name}/train_loss", loss, self.step)
      stopping = stop.requested(synced) and done < spe
      if mid_save or stopping:
        if not synced:
          _, loss_sum, loss_steps = _summed_loss(self.state)
        c.batch, c.loss_sum, c.loss_steps = done, loss_sum, loss_steps
        self.save()
      if stopping:
        self.mngr.wait()
        stop.exit(f"{name}: stopped by {stop.signal_name} at step {self.step} (epoch {epoch + 1}, "
                  f"batch {done}/{spe}); saved {self.mngr.directory / str(self.step)}. Run the "
                  "same command to resume from it")
    bar.close()
    return images, skipped

  def end_epoch(self, stop, t_epoch, images, skipped):
    """Validation, the epoch's row and checkpoint, early stopping and a stop asked for."""
    run, stage, name, c = self.run, self.stage, self.name, self.c
    train_seconds = time.time() - t_epoch
    train_loss, _, _ = _summed_loss(self.state)
    _check_finite(train_loss, name, self.step, self.mngr)
    epoch = c.epoch
    row = {"stage": name, "epoch": epoch + 1, "step": self.step, "train_loss": train_loss}
    row.update(_validation_row(self.p.eval_step, self.state, self.p.frozen, stage.val, run.mesh,
                               run.config))
    row.update(learning_rate=float(stage.schedule(self.step // stage.accumulate_steps)),
               train_images=images,
               images_per_second=round((images - skipped) / max(train_seconds, 1e-9), 1),
               seconds=round(time.time() - t_epoch, 2))
    c.best, c.bad_epochs = track_best(self.best_metric, c.best, c.bad_epochs, row[self.best_metric])
    halt = self.patience > 0 and c.bad_epochs >= self.patience
    c.epoch, c.batch, c.loss_sum, c.loss_steps, c.stopped = epoch + 1, 0, 0.0, 0, int(halt)
    self.state = _reset_sums(self.state, self.p.shardings)
    # the row first: a kill before the checkpoint redoes the epoch (its row rewritten); one
    # after it would leave a resumable step whose row is lost
    _log_epoch(run, row)
    self.save(metrics={k: row[k] for k in BEST_METRICS if k in row})
    if run.on_epoch is not None:
      self.mngr.wait()  # the epoch's checkpoint is complete whatever the callback does
      run.on_epoch(row)
    if halt:
      logging.info("%s: early stop after epoch %d (%d epochs without improvement of %s)",
                   name, epoch + 1, self.patience, self.best_metric)
    if stop.requested(True) and c.epoch < self.epochs and not halt:
      self.mngr.wait()
      stop.exit(f"{name}: stopped by {stop.signal_name} after epoch {epoch + 1}; saved "
                f"{self.mngr.directory / str(self.step)}. Run the same command to resume from it")


def fit(run, stage):
  """Trains one stage to its end (or early stop), resuming from its latest intact checkpoint."""
  f = _Fit(run, stage)
  try:
    with progress.StopSignals() as stop:
      while f.running:
        t_epoch = time.time()
        images, skipped = f.train_epoch(stop)
        f.end_epoch(stop, t_epoch, images, skipped)
  finally:
    f.mngr.wait()  # even on an error: a started save completes, not half-written
  checkpoints.mark_done(run.workdir, stage.name, {"step": f.step, "best": f.c.best})
  f.mngr.close()
  nnx.update(stage.model, f.state.trainable, f.state.stats)  # the model holds the final values
  return f.state


def _validation_row(eval_step, state, frozen, feed, mesh, config):
  """val_loss and the validation metrics of the weights, and of their EMA (suffix _ema)."""
  k = int(config.eval.k)
  row = {}
  for suffix, weights in (("", state), ("_ema", state.ema_weights() if state.ema else None)):
    if weights is None:
      continue
    loss, scores, labels = run_validation(eval_step, weights, frozen, feed, mesh)
    m = metrics.compute(scores, labels, k=k, threshold=float(config.eval.threshold),
                        topk_min_score=bool(config.eval.topk_min_score))
    row[f"val_loss{suffix}"] = loss
    row.update({f"val_{name}{suffix}": float(m[name])
                for name in ("mAP", f"CF1_top{k}", f"OF1_top{k}")})
  return row


def _log_epoch(run, row):
  if not run.is_chief:
    return
  print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
        flush=True)
  workdir_lib.append_metrics(run.workdir, row)
  writer = run.writer()
  for k, v in row.items():
    if isinstance(v, (int, float)) and k not in ("epoch", "step"):
      writer.add_scalar(f"{row['stage']}/{k}", v, row["step"])
  writer.flush()
