"""Restoring a run: a workdir (or a checkpoint folder in it) -> the model, its labels and config.

The one room that turns a workdir into a restored run, for evaluation, the finetune stage's start
from the head checkpoint, and inference (`mlc_jax.load`, prediction, export): from config.json,
labels.txt and an Orbax checkpoint (mlc_jax.checkpoints, the format), with the per-class
thresholds tuned for that very checkpoint when evaluation tuned them. No dataset, no training code.
"""
import dataclasses
import pathlib
from typing import Any

import jax
from flax import nnx

from mlc_jax import checkpoints, models, parallel, workdir as workdir_lib
from mlc_jax.config import TRAINED_STAGES
from mlc_jax.errors import UserError


@dataclasses.dataclass
class Restored:
  """A model restored from a workdir, with what describes it."""
  workdir: Any
  config: Any       # config.json
  labels: list      # labels.txt
  model: Any        # MultiLabelModel with the checkpoint's values
  stage: str
  step: int
  thresholds: Any   # float32 (C,) tuned for this very checkpoint (and weights), or None
  weights: str = "regular"  # 'ema': the checkpoint's moving average of the weights

  @property
  def name(self):
    """'STAGE/STEP', with ' (EMA)' for the moving average's weights."""
    return f"{self.stage}/{self.step}" + (" (EMA)" if self.weights == "ema" else "")


def _default_placement():
  # One process: this machine's first device. Several: replicated over all of them (each
  # process then holds a whole copy; Orbax restores collectively).
  if jax.process_count() == 1:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return parallel.replicated(parallel.mesh())


def restore_model(workdir, stage=None, which="best", *, model=None, device=None, weights=None,
                  config=None, labels=None):
  """The trained model of a workdir: stage (None = the last with checkpoints), which step.

  which: 'best' (by the run's checkpoint.best_metric), 'latest' or a step number. weights:
  'regular' or 'ema' (default: the ones the best metric ranks, weights_of). model: restore into
  this model's arrays, keeping their shardings (training); otherwise a model is built from
  config.json and every array lands on `device` (default: this machine's first device; with
  several processes, replicated over all devices). config, labels: the run's own, when the caller
  holds them in memory (the same process that recorded them); else read from the workdir.
  """
  config = config if config is not None else workdir_lib.read_config(workdir)
  labels = list(labels) if labels is not None else workdir_lib.read_labels(workdir)
  stage = stage or checkpoints.final_stage(workdir)
  if stage not in TRAINED_STAGES:
    raise UserError(f"stage {stage!r} has no checkpoints; choose one of {TRAINED_STAGES}")
  directory = workdir_lib.checkpoint_dir(workdir, stage)
  weights = weights or checkpoints.weights_of(config, stage)
  if weights not in ("regular", "ema"):
    raise UserError(f"weights={weights!r} must be 'regular' or 'ema'")
  mngr = checkpoints.Manager(workdir, stage, checkpoints.best_metric_of(config, stage), read_only=True)
  try:
    step = mngr.step_for(which)
    if step is None:
      where = directory if not isinstance(which, int) else directory / str(which)
      raise UserError(f"no complete checkpoint in {where}; train with --mode=train or pass "
                      "another checkpoint folder")
    build = lambda: models.build_model(config, len(labels), rngs=nnx.Rngs(0))
    if model is None:
      # Shapes only: random initialisation of a full VGG16 would cost seconds and be overwritten.
      model = nnx.eval_shape(build)
      target = checkpoints.abstract_of(checkpoints.model_state(model), device or _default_placement())
    else:
      target = checkpoints.abstract_of(checkpoints.model_state(model))
    if weights == "ema" and not (directory / str(step) / "ema").is_dir():
      raise UserError(f"checkpoint {directory / str(step)} holds no EMA weights (the run's "
                      "finetune.ema_decay was 0); use weights='regular'")
    restored = mngr.restore(step, **{"abstract_model" if weights == "regular" else "abstract_ema":
                                     target})
  finally:
    mngr.close()
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model, nnx.Not(models.SAVED)))):
    model = build()  # state the checkpoint does not keep (RNG streams) needs real values
  checkpoints.load_model_state(model, restored["model" if weights == "regular" else "ema"])
  thresholds = workdir_lib.read_thresholds(workdir, stage, step, labels, weights)
  return Restored(workdir_lib.path(workdir), config, labels, model, stage, int(step), thresholds,
                  weights)


def find_workdir(path):
  """A workdir, or a checkpoint folder inside one -> (workdir, stage or None, step or None)."""
  path = pathlib.Path(path).expanduser().resolve()
  if not path.exists():
    raise UserError(f"{path} does not exist; pass a training workdir "
                    "(the --workdir of --mode=train)")
  for parent in (path, *path.parents):
    if (parent / "config.json").exists():
      break
  else:
    raise UserError(f"{path} is not inside a training workdir (no config.json in it or above it); "
                    "pass the --workdir of --mode=train")
  rel = path.relative_to(parent).parts
  if not rel:
    return parent, None, None
  if rel[0] != "checkpoints" or len(rel) > 3:
    raise UserError(f"{path} is not a checkpoint folder of {parent}; pass the workdir itself or "
                    f"{parent / 'checkpoints' / 'STAGE'}[/STEP]")
  stage = rel[1] if len(rel) > 1 else None
  step = None
  if len(rel) == 3:
    if not rel[2].isdigit():
      raise UserError(f"{path} is not a checkpoint step folder (its name must be the step number)")
    step = int(rel[2])
  return parent, stage, step


def restore(path, which="best", stage=None, weights=None):
  """A workdir or a checkpoint folder in it -> Restored (model on this machine's device).

  which: 'best' or 'latest' (ignored when path names a step); stage: 'head' or 'finetune'
  (default: the one path names, else the last with checkpoints); weights: 'regular' or 'ema'
  (default: the ones the run's checkpoint.best_metric ranks).
  """
  if which not in ("best", "latest"):
    raise UserError(f"which={which!r} must be 'best' or 'latest'")
  workdir, path_stage, step = find_workdir(path)
  if stage and path_stage and stage != path_stage:
    raise UserError(f"{path} is a checkpoint of the {path_stage} stage, not of {stage}")
  return restore_model(workdir, stage or path_stage, which if step is None else step,
                                   weights=weights)
