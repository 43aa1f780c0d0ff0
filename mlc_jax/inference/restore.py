"""Restoring a trained run from its workdir alone: `mlc_jax.load` and what prediction and export use.

A run comes back from config.json, labels.txt and an Orbax checkpoint (mlc_jax.checkpoints
.restore_model, the one restore path), with the per-class thresholds tuned for that very
checkpoint when evaluation tuned them: no config file, no dataset, no training code.
"""
import pathlib

from mlc_jax import checkpoints
from mlc_jax.errors import UserError
from mlc_jax.inference.classifier import Classifier


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
  """A workdir or a checkpoint folder in it -> checkpoints.Restored (model on this machine's device).

  which: 'best' or 'latest' (ignored when path names a step); stage: 'head' or 'finetune'
  (default: the one path names, else the last with checkpoints); weights: 'regular' or 'ema'
  (default: the ones the run's checkpoint.best_metric ranks).
  """
  if which not in ("best", "latest"):
    raise UserError(f"which={which!r} must be 'best' or 'latest'")
  workdir, path_stage, step = find_workdir(path)
  if stage and path_stage and stage != path_stage:
    raise UserError(f"{path} is a checkpoint of the {path_stage} stage, not of {stage}")
  return checkpoints.restore_model(workdir, stage or path_stage, which if step is None else step,
                                   weights=weights)


def load(path, which="best", stage=None, weights=None):
  """Restores a trained run -> Classifier.

  path: a workdir, or a checkpoint folder inside it (WORKDIR/checkpoints/STAGE[/STEP]).
  which: 'best' (by the run's checkpoint.best_metric) or 'latest'; ignored when path names a step.
  weights: 'regular' or 'ema' (default: the ones checkpoint.best_metric ranks; see
  Classifier.checkpoint). The Classifier's thresholds are those tuned for exactly this checkpoint
  and weights (else 0.5 everywhere).
  Parameters land on this machine's default device, whatever the run was trained on.
  """
  r = restore(path, which, stage, weights)
  return Classifier(r.model, r.labels, image_size=r.config.image_size, resize=r.config.data.resize,
                    activation=r.config.head.activation, thresholds=r.thresholds,
                    checkpoint=r.name,
                    exif_orientation=r.config.data.get("exif_orientation", True),
                    max_pixels=r.config.data.get("max_pixels", None))
