"""The epoch loop shared by the head and finetune stages: steps, logging, validation, checkpoints.

Resume is exact: a checkpoint stores the optimizer state and counters (epoch, batches done in it,
the epoch's running loss, early-stopping state); data order comes from (seed, epoch) and the
batches already done are skipped; step keys are fold_in(base, step). The host syncs with the
device once per logging interval, never per step; a non-finite loss is caught there, before any
checkpoint of the bad state can be written.
"""
import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from mlc_jax import checkpoints, sharding
from mlc_jax.errors import UserError

STAGE_INDEX = {"head": 1, "finetune": 2}  # folded into the base key: each stage its own stream


@dataclasses.dataclass
class Run:
  """What every stage of one train_and_evaluate call shares."""
  config: Any
  workdir: str
  source: Any
  labels: list
  mesh: Any
  _writer: Any = None

  @property
  def is_chief(self):
    """Process 0 writes logs, metrics.jsonl and TensorBoard."""
    return jax.process_index() == 0

  def writer(self):
    """The TensorBoard writer (tensorboardX), on process 0 only."""
    if self._writer is None and self.is_chief:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(str(pathlib.Path(self.workdir) / "tensorboard"))
    return self._writer

  def close(self):
    """Flushes TensorBoard."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None


@dataclasses.dataclass
class Hooks:
  """What a stage plugs into `fit`: its step, data, validation and model (de)serialisation."""
  do_step: Callable      # (state, sums, device batch, base_key, step) -> (state, sums)
  batches: Callable      # (epoch, start_batch) -> iterator of host batches
  validate: Callable     # state -> (val_loss, scores (N, C), labels (N, C))
  model_state: Callable  # state -> pure dict of the full model (checkpoint item 'model')
  load: Callable         # pure dict -> state entries (without opt_state)
  tx: Any
  steps_per_epoch: int
  images_per_step: int
  initial: dict
  opt_shardings: Any = None  # sharding tree of the optimizer state; None: replicated


def metrics_path(workdir):
  """WORKDIR/metrics.jsonl."""
  return pathlib.Path(workdir) / "metrics.jsonl"


def truncate_metrics(workdir, stage, after_step):
  """Drops rows this stage will write again (step > after_step) and every later stage's rows."""
  path = metrics_path(workdir)
  if not path.exists():
    return
  order = ["features", "head", "finetune", "evaluate"]
  keep = []
  for line in path.read_text().splitlines():
    row = json.loads(line)
    later = order.index(row.get("stage", "head")) > order.index(stage)
    if not later and not (row.get("stage") == stage and row.get("step", 0) > after_step):
      keep.append(line)
  path.write_text("".join(line + "\n" for line in keep))


def validate(val_fn, states, batches, mesh, *, inputs, labels):
  """Runs val_fn over batches -> (mean loss, scores, labels) of the valid (unpadded) images."""
  scores, ys, masks, loss_sums = [], [], [], []
  host = ({"x": b[inputs], "y": b[labels], "mask": b["mask"]} for b in batches)
  for b in sharding.prefetch(host, mesh):
    s, loss_sum = val_fn(states, b["x"], b["y"], b["mask"])
    scores.append(s)
    ys.append(b["y"])
    masks.append(b["mask"])
    loss_sums.append(loss_sum)
  mask = np.concatenate([sharding.to_host(m) for m in masks]).astype(bool)
  scores = np.concatenate([sharding.to_host(s) for s in scores])[mask]
  ys = np.concatenate([sharding.to_host(y) for y in ys])[mask]
  return float(sum(np.asarray(x) for x in loss_sums)) / max(1, int(mask.sum())), scores, ys


def _improved(value, best, mode):
  return value < best if mode == "min" else value > best


class _Progress:
  """tqdm on a terminal, plain log lines otherwise."""

  def __init__(self, stage, epoch, epochs, total, start, chief):
    self.prefix = f"{stage} epoch {epoch + 1}/{epochs}"
    self.bar = None
    if chief and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, desc=self.prefix, unit="step", leave=True)
    self.total, self.done = total, start

  def update(self, done, loss, images_per_second):
    if self.bar is not None:
      self.bar.update(done - self.done)
      self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.0f}")
    else:
      logging.info("%s step %d/%d loss %.4f %.0f img/s", self.prefix, done, self.total, loss,
                   images_per_second)
    self.done = done

  def close(self):
    if self.bar is not None:
      self.bar.close()


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


def _counters(**kw):
  return {k: np.asarray(v, np.float64 if isinstance(v, float) else np.int64) for k, v in kw.items()}


def fit(run, stage, stage_config, hooks):
  """Trains one stage to its end (or early stop), resuming from its latest checkpoint."""
  config, mesh = run.config, run.mesh
  mode = checkpoints.BEST_METRICS[config.checkpoint.best_metric]
  mngr = checkpoints.Manager(run.workdir, stage, config.checkpoint.best_metric)
  spe, epochs = hooks.steps_per_epoch, int(stage_config.epochs)
  repl = sharding.replicated(mesh)
  state = dict(hooks.initial)
  state["opt_state"] = jax.jit(hooks.tx.init, out_shardings=hooks.opt_shardings or repl)(
      state["trainable"])
  c = dict(epoch=0, batch=0, loss_sum=0.0, loss_steps=0,
           best=math.inf if mode == "min" else -math.inf, bad_epochs=0, stopped=0)
  latest = mngr.latest_step()
  if latest is not None:
    template = _counters(**c)
    restored = mngr.restore(latest, checkpoints.abstract_of(hooks.model_state(state)),
                            {"opt_state": checkpoints.abstract_of(state["opt_state"]),
                             "counters": template})
    state.update(hooks.load(restored["model"]))
    state["opt_state"] = restored["train"]["opt_state"]
    c = {k: type(c[k])(np.asarray(v)) for k, v in restored["train"]["counters"].items()}
    logging.info("%s: resuming from step %d (epoch %d, batch %d)", stage, latest, c["epoch"] + 1,
                 c["batch"])
  step = c["epoch"] * spe + c["batch"]
  if run.is_chief:
    truncate_metrics(run.workdir, stage, step if latest is not None else -1)
  base_key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), STAGE_INDEX[stage])
  log_every = max(1, int(config.log_every_steps))
  every = int(config.checkpoint.every_steps)
  patience = int(config.early_stopping_patience)
  try:
    while c["epoch"] < epochs and not c["stopped"]:
      epoch, start = c["epoch"], c["batch"]
      t_epoch = time.time()
      sums = jax.device_put({"loss_sum": np.float32(c["loss_sum"]),
                             "steps": np.int32(c["loss_steps"])}, repl)
      progress = _Progress(stage, epoch, epochs, spe, start, run.is_chief)
      t_log, done_log = time.time(), start
      done = start
      for batch in sharding.prefetch(hooks.batches(epoch, start), mesh):
        state, sums = hooks.do_step(state, sums, batch, base_key, step)
        step += 1
        done += 1
        mid_save = every > 0 and step % every == 0 and done < spe
        if done % log_every == 0 or done == spe or mid_save:
          host = jax.device_get(sums)  # the one host sync of the interval
          loss = float(host["loss_sum"]) / max(1, int(host["steps"]))
          _check_finite(loss, stage, step, mngr)
          now = time.time()
          rate = (done - done_log) * hooks.images_per_step / max(now - t_log, 1e-9)
          progress.update(done, loss, rate)
          t_log, done_log = now, done
          if run.is_chief and run.writer() is not None:
            run.writer().add_scalar(f"{stage}/train_loss", loss, step)
        if mid_save:
          c.update(batch=done, loss_sum=float(host["loss_sum"]), loss_steps=int(host["steps"]))
          mngr.save(step, hooks.model_state(state),
                    {"opt_state": state["opt_state"], "counters": _counters(**c)})
      progress.close()
      host = jax.device_get(sums)
      train_loss = float(host["loss_sum"]) / max(1, int(host["steps"]))
      _check_finite(train_loss, stage, step, mngr)
      val_loss, scores, labels = hooks.validate(state)
      row = {"stage": stage, "epoch": epoch + 1, "step": step, "train_loss": train_loss,
             "val_loss": val_loss}
      row.update(_val_metrics(scores, labels, config))
      lr = float(optim_lr(stage_config, spe, step))
      row.update(learning_rate=lr, seconds=round(time.time() - t_epoch, 2))
      value = row[config.checkpoint.best_metric]
      if _improved(value, c["best"], mode):
        c.update(best=value, bad_epochs=0)
      else:
        c["bad_epochs"] += 1
      stop = patience > 0 and c["bad_epochs"] >= patience
      c.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_steps=0, stopped=int(stop))
      mngr.save(step, hooks.model_state(state),
                {"opt_state": state["opt_state"], "counters": _counters(**c)},
                metrics={"val_loss": val_loss, "val_mAP": row["val_mAP"]})
      _log_epoch(run, row)
      if stop:
        logging.info("%s: early stop after epoch %d (%d epochs without improvement of %s)", stage,
                     epoch + 1, patience, config.checkpoint.best_metric)
  finally:
    mngr.wait()  # even on Ctrl-C or an error: a started save completes, not half-written
  checkpoints.mark_done(run.workdir, stage, {"step": step, "best": c["best"]})
  mngr.close()
  return state


def optim_lr(stage_config, spe, step):
  """The learning rate the schedule gives at step (for the log)."""
  from mlc_jax import optim
  return optim.schedule(stage_config, spe)(step)


def _val_metrics(scores, labels, config):
  from mlc_jax import metrics
  k = int(config.eval.k)
  m = metrics.compute(scores, labels, k=k, threshold=float(config.eval.threshold),
                      topk_min_score=bool(config.eval.topk_min_score))
  return {f"val_{name}": float(m[name]) for name in ("mAP", f"CF1_top{k}", f"OF1_top{k}")}


def _log_epoch(run, row):
  if not run.is_chief:
    return
  print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
        flush=True)
  with metrics_path(run.workdir).open("a") as f:
    f.write(json.dumps(row) + "\n")
  writer = run.writer()
  for k, v in row.items():
    if isinstance(v, (int, float)) and k not in ("epoch", "step"):
      writer.add_scalar(f"{row['stage']}/{k}", v, row["step"])
  writer.flush()
