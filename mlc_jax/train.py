"""The training stages: features -> head -> finetune -> evaluate (config.stages picks which run).

`train_and_evaluate(config, workdir)` runs every unfinished stage in order; on an existing workdir
it resumes the unfinished stage from its latest checkpoint with the same data order (seed, epoch,
start_batch) and random keys (fold_in(base, step)), so the result equals an uninterrupted run.
The epoch loop lives in mlc_jax.loop, the jitted steps in mlc_jax.steps.
"""
import json
import pathlib

import jax
import numpy as np
from absl import logging
from flax import nnx

from mlc_jax import checkpoints, features, losses, optim, sharding, steps
from mlc_jax import loop as loop_lib
from mlc_jax.errors import UserError

STAGES = ("features", "head", "finetune", "evaluate")
ACTIVATIONS = ("sigmoid", "softmax")


def _check_keys(config, reference, prefix=""):
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in reference:
      raise UserError(f"unknown config key {name!r}; check its spelling against configs/default.py")
    value, ref = config[key], reference[key]
    if hasattr(value, "keys") and hasattr(ref, "keys"):
      _check_keys(value, ref, name + ".")


def validate(config):
  """Fails before any work on an unknown key or a bad enum-like value, naming it."""
  try:
    from configs import default
  except ImportError:  # the library used outside the repository: the lock on the flags remains
    default = None
  if default is not None:
    _check_keys(config, default.get_config())
  bad = [s for s in config.stages if s not in STAGES]
  if bad:
    raise UserError(f"stages={tuple(config.stages)}: unknown {bad}; choose from {STAGES}")
  losses.from_config(config.loss)
  optim.check_unfreeze_blocks(config.finetune.unfreeze_blocks)
  for name in ("head", "finetune"):
    stage = config[name]
    if stage.optimizer not in optim.OPTIMIZERS:
      raise UserError(f"{name}.optimizer={stage.optimizer!r} is not one of {optim.OPTIMIZERS}")
    if stage.get("schedule", "constant") not in optim.SCHEDULES:
      raise UserError(f"{name}.schedule={stage.schedule!r} is not one of {optim.SCHEDULES}")
    if int(stage.epochs) < 0 or not float(stage.learning_rate) > 0:
      raise UserError(f"{name}.epochs must be >= 0 and {name}.learning_rate > 0")
  if config.checkpoint.best_metric not in checkpoints.BEST_METRICS:
    raise UserError(f"checkpoint.best_metric={config.checkpoint.best_metric!r} is not one of "
                    f"{tuple(checkpoints.BEST_METRICS)}")
  if config.head.activation not in ACTIVATIONS:
    raise UserError(f"head.activation={config.head.activation!r} is not one of {ACTIVATIONS}")
  if config.dtype not in ("float32", "bfloat16"):
    raise UserError(f"dtype={config.dtype!r} is not float32 or bfloat16")
  sharding.check_param_sharding(config)
  for name in ("batch_size", "eval_batch_size"):
    if int(config[name]) < 1:
      raise UserError(f"{name}={config[name]} must be >= 1")


def loss_fn(config):
  """The training loss: config.loss for a sigmoid head; softmax cross-entropy for softmax."""
  if config.head.activation == "softmax":
    return losses.softmax_cross_entropy
  return losses.from_config(config.loss)


def _write_workdir(config, workdir, labels):
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() != 0:
    return
  path = workdir / "config.json"
  new = config.to_json(indent=2, sort_keys=True)
  if path.exists() and path.read_text() != new:
    logging.warning("%s differs from this run's config; resuming under the new one", path)
  path.write_text(new)
  (workdir / "labels.txt").write_text("\n".join(labels) + "\n")


def _new_model(config, num_classes):
  from mlc_jax import models
  model = models.build_model(config, num_classes, rngs=nnx.Rngs(int(config.seed)))
  models.load_backbone_weights(model.backbone, config)
  # Every saved array on the global mesh: Orbax cannot save host-local arrays across processes.
  nnx.update(model, sharding.place_state(nnx.state(model, checkpoints.SAVED), sharding.mesh(),
                                         config))
  return model


def _restore_into(model, workdir, stage, config, which="best"):
  mngr = checkpoints.Manager(workdir, stage, config.checkpoint.best_metric)
  step = mngr.step_for(which)
  restored = mngr.restore(step, abstract_model=checkpoints.abstract_state(model))
  checkpoints.load_model_state(model, restored["model"])
  mngr.close()
  return step


def state_layout(config, mesh, tx, trainable, **others):
  """Sharding trees (config.param_sharding) of the trainable group, its optimizer state, others."""
  trees = dict(others, trainable=trainable, opt_state=jax.eval_shape(tx.init, trainable))
  return {name: sharding.state_shardings(tree, mesh, config) for name, tree in trees.items()}


def _chunks(x, y, size):
  """Padded fixed-size batches of cached features, with a mask for the padding."""
  n = x.shape[0]
  for start in range(0, n, size):
    stop = min(n, start + size)
    pad = size - (stop - start)
    batch = {"x": np.asarray(x[start:stop], np.float32), "y": np.asarray(y[start:stop], np.float32),
             "mask": np.ones(stop - start, bool)}
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def run_features(run):
  """Stage 'features': the bottleneck cache of the frozen backbone (built or reused)."""
  model = _new_model(run.config, len(run.labels))
  return features.ensure(run.config, run.workdir, run.source, model.backbone, run.mesh)


def run_head(run):
  """Stage 'head': the head alone on cached features (RMSprop, BCE, dropout by default)."""
  config, mesh = run.config, run.mesh
  model = _new_model(config, len(run.labels))
  cache = features.load(features.ensure(config, run.workdir, run.source, model.backbone, mesh))
  batch_size = int(config.head.batch_size)
  sharding.check_batch_size(batch_size, mesh, "head.batch_size")
  n_train = cache["train"][0].shape[0]
  if n_train < batch_size:
    raise UserError(f"head.batch_size={batch_size} exceeds the {n_train} training images")
  spe = n_train // batch_size
  train_x = sharding.replicate(np.asarray(cache["train"][0]), mesh)
  train_y = sharding.replicate(np.asarray(cache["train"][1]), mesh)
  graphdef, params, rest = nnx.split(model.head, nnx.Param, ...)
  tx = optim.make(config.head, spe)
  layout = state_layout(config, mesh, tx, params)
  fn = loss_fn(config)
  step_fn = steps.make_head_step(mesh, graphdef, tx, fn, layout)
  val_fn = steps.make_loss_step(mesh, nnx.graphdef(model.head), fn, config.head.activation)
  val_x, val_y = cache["val"]

  def do_step(state, sums, batch, key, step):
    p, o, sums = step_fn(state["trainable"], rest, state["opt_state"], sums, train_x, train_y,
                         batch["index"], key, step)
    return {"trainable": p, "opt_state": o}, sums

  def batches(epoch, start):
    order = np.random.default_rng([int(config.seed), epoch]).permutation(n_train)
    order = order[:spe * batch_size].reshape(spe, batch_size).astype(np.int32)
    return ({"index": row} for row in order[start:])

  def validate_fn(state):
    chunks = _chunks(val_x, val_y, config.eval_batch_size)
    return loop_lib.validate(val_fn, (state["trainable"], rest), chunks,
                             mesh, inputs="x", labels="y")

  def model_state(state):
    nnx.update(model.head, state["trainable"])
    return checkpoints.model_state(model)

  def load(pure):
    checkpoints.load_model_state(model, pure)
    return {"trainable": sharding.place(nnx.state(model.head, nnx.Param), layout["trainable"])}

  hooks = loop_lib.Hooks(do_step=do_step, batches=batches, validate=validate_fn,
                         model_state=model_state, load=load, tx=tx, steps_per_epoch=spe,
                         images_per_step=batch_size, opt_shardings=layout["opt_state"],
                         initial={"trainable": sharding.place(params, layout["trainable"])})
  return loop_lib.fit(run, "head", config.head, hooks)


def run_finetune(run):
  """Stage 'finetune': backbone + head; the top unfreeze_blocks train, the rest stays frozen."""
  from mlc_jax.data import augment, pipeline
  config, mesh = run.config, run.mesh
  model = _new_model(config, len(run.labels))
  if checkpoints.has_checkpoints(run.workdir, "head"):
    step = _restore_into(model, run.workdir, "head", config)
    logging.info("finetune: starting from the head checkpoint of step %d", step)
  batch_size = int(config.batch_size)
  sharding.check_batch_size(batch_size, mesh, "batch_size")
  spe = pipeline.steps_per_epoch(run.source, "train", batch_size, train=True)
  trainable_filter = optim.trainable_filter(config.finetune.unfreeze_blocks,
                                            config.model.include_top)
  graphdef, trainable, stats, frozen = nnx.split(model, trainable_filter, nnx.BatchStat, ...)
  tx = optim.make(config.finetune, spe)
  layout = state_layout(config, mesh, tx, trainable, stats=stats, frozen=frozen)
  frozen = sharding.place(frozen, layout["frozen"])
  fn = loss_fn(config)
  aug = config.augment
  augment_fn = lambda images, key: augment.augment(images, key, aug)
  step_fn = steps.make_finetune_step(mesh, graphdef, tx, fn, augment_fn, layout)
  val_fn = steps.make_loss_step(mesh, nnx.graphdef(model), fn, config.head.activation)

  def do_step(state, sums, batch, key, step):
    t, s, o, sums = step_fn(state["trainable"], state["stats"], frozen, state["opt_state"], sums,
                            batch, key, step)
    return {"trainable": t, "stats": s, "opt_state": o}, sums

  def batches(epoch, start):
    return pipeline.batches(run.source, "train", batch_size=batch_size, train=True, config=config,
                            seed=int(config.seed), epoch=epoch, start_batch=start)

  def validate_fn(state):
    full = (state["trainable"], state["stats"], frozen)
    val = pipeline.batches(run.source, "val", batch_size=int(config.eval_batch_size), train=False,
                           config=config)
    return loop_lib.validate(val_fn, full, val, mesh, inputs="image", labels="labels")

  def model_state(state):
    nnx.update(model, state["trainable"], state["stats"])
    return checkpoints.model_state(model)

  def load(pure):
    checkpoints.load_model_state(model, pure)
    _, t, s, _ = nnx.split(model, trainable_filter, nnx.BatchStat, ...)
    return {"trainable": sharding.place(t, layout["trainable"]),
            "stats": sharding.place(s, layout["stats"])}

  hooks = loop_lib.Hooks(do_step=do_step, batches=batches, validate=validate_fn,
                         model_state=model_state, load=load, tx=tx, steps_per_epoch=spe,
                         images_per_step=batch_size, opt_shardings=layout["opt_state"],
                         initial={"trainable": sharding.place(trainable, layout["trainable"]),
                                  "stats": sharding.place(stats, layout["stats"])})
  return loop_lib.fit(run, "finetune", config.finetune, hooks)


def run_evaluate(run):
  """Stage 'evaluate': the best checkpoint on the test split (mlc_jax.evaluate)."""
  from mlc_jax import evaluate
  return evaluate.evaluate(run.workdir, split="test")


def _summary(run, result):
  path = pathlib.Path(run.workdir) / "eval" / "test" / "metrics.json"
  metrics = result if isinstance(result, dict) else {}
  if path.exists():
    metrics = json.loads(path.read_text())
  metrics = metrics.get("metrics", metrics)
  k = int(run.config.eval.k)
  parts = [f"{name} {metrics[name]:.4f}" for name in ("mAP", f"CF1_top{k}", f"OF1_top{k}")
           if isinstance(metrics.get(name), (int, float))]
  lines = ["test: " + (", ".join(parts) or "not evaluated (add 'evaluate' to config.stages)")]
  try:
    lines.append(f"checkpoint: {checkpoints.final_stage_dir(run.workdir)}")
  except UserError:
    pass
  report = pathlib.Path(run.workdir) / "eval" / "test" / "report.md"
  if report.exists():
    lines.append(f"report: {report}")
  return "\n".join(lines)


class _QuietOrbax:
  """Drops Orbax's per-save INFO lines (a dozen per checkpoint); its warnings still show."""

  def filter(self, record):
    return record.levelno >= 30 or "orbax" not in record.pathname


def train_and_evaluate(config, workdir):
  """Runs (or resumes) every stage of config.stages in workdir; returns the summary text."""
  validate(config)
  if not any(isinstance(f, _QuietOrbax) for f in logging.get_absl_logger().filters):
    logging.get_absl_logger().addFilter(_QuietOrbax())
  sharding.initialize(config)
  from mlc_jax.data import registry
  source = registry.get(config)
  _write_workdir(config, workdir, source.labels)
  run = loop_lib.Run(config=config, workdir=str(pathlib.Path(workdir).resolve()), source=source,
                     labels=list(source.labels), mesh=sharding.mesh())
  runners = {"features": run_features, "head": run_head, "finetune": run_finetune,
             "evaluate": run_evaluate}
  result = None
  try:
    for stage in config.stages:
      if stage in checkpoints.STAGES and checkpoints.is_done(workdir, stage):
        logging.info("%s: already done in %s, skipping", stage, workdir)
        continue
      logging.info("stage %s", stage)
      result = runners[stage](run)
  finally:
    run.close()
  summary = _summary(run, result)
  if jax.process_index() == 0:
    print(summary, flush=True)
  return summary
