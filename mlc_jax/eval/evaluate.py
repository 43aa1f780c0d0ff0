"""--mode=evaluate: a checkpoint (or a predictions file) on a split -> WORKDIR/eval/SPLIT.

evaluate(workdir): a checkpoint of a stage (the best of the last stage by default) on the split,
at threshold 0.5 and at per-class thresholds tuned on the validation split (reported apart and
stored with that very checkpoint, for prediction); evaluate(workdir, predictions=FILE): a tagging
service's predictions file, same metrics. Each publishes its outputs all together and rewrites
report.md, which sets every result found side by side (the baseline: mlc_jax.eval.baselines).

The evaluation runs under the workdir's config.json. Keys that do not change the model may come
from the given config (config.keys' evaluation class: a moved dataset, a smaller evaluation batch, eval.*); an
explicit command-line override of any other key is refused, since it would misdescribe the model.
"""
import hashlib
import json
import pathlib
import shutil

import ml_collections
import numpy as np
from absl import logging

from mlc_jax import (checkpoints, config as config_lib, metrics, parallel, restore,
                     workdir as workdir_lib)
from mlc_jax.config import keys as config_keys
from mlc_jax.data import mixture, registry
from mlc_jax.data.source import SPLITS
from mlc_jax.errors import UserError
from mlc_jax.eval import plots, prediction_files, protocol, report, results, scoring

def evaluation_config(saved, given=None, explicit=None):
  """config.json with the evaluation keys (config.keys) of `given`; `explicit` ({key: value}, the
  command line's overrides) may name only those (UserError otherwise)."""
  # a value equal to config.json's changes nothing (the training command's own flags, repeated)
  bad = sorted(k for k, v in (explicit or {}).items() if not config_lib.is_evaluation(k) and
               json.dumps(config_lib.get(saved, k), default=str) != json.dumps(v, default=str))
  if bad:
    raise UserError(f"--mode=evaluate runs the model as trained (config.json); overriding "
                    f"{', '.join(bad)} would change it. Overridable here: "
                    f"{', '.join(config_keys.keys_of(config_keys.EVALUATION))}")
  config = ml_collections.ConfigDict(saved.to_dict())
  if given is None:
    return config
  ignored = []
  for key, value in config_lib.flatten(given).items():
    old = config_lib.get(config, key)
    if config_lib.is_evaluation(key):
      section, _, field = key.rpartition(".")
      (config[section] if section else config)[field] = value
    elif old is not None and json.dumps(old, default=str) != json.dumps(value, default=str):
      ignored.append(key)
  if ignored:
    logging.info("evaluate: the run's config.json holds the trained values of %s; the config "
                 "file's differ and are not used", ", ".join(ignored[:8]))
  return config_lib.resolve_paths(config)


def _check_split(split):
  if split not in SPLITS:
    raise UserError(f"--split={split!r} is not one of {SPLITS}")


def _digest(config, stage, step, split):
  """What makes an evaluation: the checkpoint, the split and the config (less free keys)."""
  flat = {k: v for k, v in config_lib.flatten(json.loads(config.to_json())).items()
          if not config_lib.is_free(k) or k.startswith("eval.")}
  key = json.dumps([stage, int(step), split, flat], sort_keys=True, default=str)
  return hashlib.sha256(key.encode()).hexdigest()[:16]


def _per_part(directory, source, config, split, scores, y, meta, tuned):
  """{alias: metrics} of each part of a mixture: its own rows (a contiguous range of the split's
  stored order) and its own labels' columns, under its own protocol; written to
  directory/ALIAS like any evaluation (metrics.json, scores.npz, plots)."""
  out = {}
  for (alias, part), start, cols in zip(source.parts, source.offsets(split), source.columns):
    rows = slice(int(start), int(start) + part.num_examples[split])
    part_meta = dict(meta, dataset=part.name, source=alias,
                     protocol=protocol.record(config, part, split, y[rows][:, cols]))
    part_tuned = (None if tuned is None else
                  {"thresholds": np.asarray(tuned["thresholds"])[cols], "tuned_on": "val"})
    out[alias] = results.save(directory / alias, scores[rows][:, cols], y[rows][:, cols],
                              [source.labels[c] for c in cols], part_meta, config,
                              tuned=part_tuned)
  return out


def is_current(workdir, split, config, stage=None, which="best"):
  """True when eval/SPLIT already holds the evaluation this call would make (nothing to redo)."""
  path = workdir_lib.eval_dir(workdir, split) / "metrics.json"
  if not path.is_file():
    return False
  try:
    meta = json.loads(path.read_text()).get("meta", {})
    stage = stage or checkpoints.final_stage(workdir)
    mngr = checkpoints.Manager(workdir, stage, config.checkpoint.best_metric, read_only=True)
    step = mngr.step_for(which)
    mngr.close()
  except (ValueError, UserError):
    return False
  return step is not None and meta.get("digest") == _digest(config, stage, step, split)


def evaluate(workdir, split="test", which="best", stage=None, *, predictions=None, given=None,
             explicit=None, source=None, mesh=None, run_config=None):
  """Evaluates a checkpoint of workdir (or a predictions file) on `split`; returns the metrics.

  Writes WORKDIR/eval/SPLIT/{metrics.json, scores.npz, report.md, *.png}. stage: 'head' or
  'finetune' (default: the last with checkpoints); which: 'best', 'latest' or a step number.
  given / explicit: see evaluation_config (for a predictions file, `given` names the dataset;
  default config.json). source: the dataset, when the caller has it open. run_config: the run's
  config as this process recorded it (train_and_evaluate, with source): used as it is, instead
  of reading config.json back.
  """
  _check_split(split)
  if predictions:  # a service's predictions: the given config names the dataset
    return evaluate_predictions(workdir, predictions, split=split, config=given)
  config = run_config or evaluation_config(workdir_lib.read_config(workdir), given, explicit)
  labels = list(source.labels) if run_config is not None and source is not None else None
  mesh = mesh or parallel.mesh()
  restored = restore.restore_model(workdir, stage, which, config=config, labels=labels)
  source = source or registry.get(config)
  if list(source.labels) != list(restored.labels):
    raise UserError(f"{workdir}/labels.txt ({len(restored.labels)} labels) does not match dataset "
                    f"{config.dataset} ({len(source.labels)} labels); evaluate on the dataset it "
                    "was trained on")
  activation = config.head.get("activation", "sigmoid")
  score = scoring.scorer(restored.model, config, mesh, activation)
  scores, y, images = score(source, split, keep_images=int(config.eval.get("examples", 16)))
  out = workdir_lib.eval_dir(workdir, split)
  if (config.eval.get("head_alone", False) and restored.stage != "head"
      and checkpoints.steps_on_disk(workdir, "head")):
    _head_alone(workdir, config, restored.labels, source, split, mesh, out, activation)
  elif (out / "head").is_dir() and workdir_lib.is_chief():
    shutil.rmtree(out / "head")  # an earlier run's: not this evaluation's (it is recomputable)
  tuned = None
  if config.eval.tune_thresholds and split != "val":
    val_scores, val_y, _ = score(source, "val", keep_images=0)
    tuned = {"thresholds": metrics.tune_thresholds(val_scores, val_y), "tuned_on": "val"}
  weights = (f", EMA weights (decay {config.finetune.ema_decay:g})"
             if restored.weights == "ema" else "")
  meta = {"kind": "model", "dataset": config.dataset, "split": split, "activation": activation,
          "checkpoint": f"step {restored.step} of the {restored.stage} stage ({which}){weights}",
          "stage": restored.stage, "step": restored.step, "weights": restored.weights,
          "digest": _digest(config, restored.stage, restored.step, split),
          "protocol": protocol.record(config, source, split, y)}
  with workdir_lib.staged(out) as staging:
    # a mixture: each part under its own labels and protocol, keyed by part in metrics.json too
    parts = (_per_part(staging / "sources", source, config, split, scores, y, meta, tuned)
             if source.parts else None)
    m = results.save(staging, scores, y, restored.labels, meta, config, images=images,
                     tuned=tuned, extra={"sources": parts} if parts else None)
    if parts:
      m["sources"] = parts
    if workdir_lib.is_chief():
      plots.training_curves(workdir_lib.read_metrics(workdir), staging / "training_curves.png")
  if not workdir_lib.is_chief():
    return m
  for alias in parts or ():
    report.write(out / "sources" / alias)
  if tuned is not None:
    workdir_lib.write_thresholds(workdir, restored.stage, restored.step, restored.labels,
                                 tuned["thresholds"], "val", restored.weights)
  path = report.write(out, compare=config.eval.get("compare", ()))
  logging.info("evaluate %s: mAP %.4f, CF1 %.4f, OF1 %.4f; report %s", split, m["mAP"], m["CF1"],
               m["OF1"], path)
  return m


def _head_alone(workdir, config, labels, source, split, mesh, out, activation):
  """eval.head_alone: the head stage's best checkpoint (the head on the frozen backbone's
  features) scored on split into out/head, which the report shows beside the fine-tuned model."""
  head = restore.restore_model(workdir, "head", "best", config=config, labels=labels)
  scores, y, _ = scoring.scorer(head.model, config, mesh, activation)(source, split, keep_images=0)
  meta = {"kind": "model", "dataset": config.dataset, "split": split, "activation": activation,
          "checkpoint": f"step {head.step} of the head stage (best)", "stage": "head",
          "step": head.step, "weights": head.weights,
          "protocol": protocol.record(config, source, split, y)}
  with workdir_lib.staged(out / "head") as staging:
    results.save(staging, scores, y, head.labels, meta, config)


def evaluate_predictions(workdir, path, split="test", config=None):
  """Scores a predictions file (CSV or JSON lines) against `split` of the config's dataset.

  The dataset comes from `config`, else from WORKDIR/config.json. Writes
  WORKDIR/eval/SPLIT/predictions_NAME and the report; returns the metrics dict.
  """
  _check_split(split)
  if config is None:
    config = workdir_lib.read_config(workdir)
  mixture.require_single(config, "a predictions file")
  source = registry.get(config)
  names, y = prediction_files.split_examples(source, split)
  synonyms_file = config.eval.get("synonyms", "")
  synonyms, ignored = prediction_files.read_synonyms(synonyms_file)
  stats = {}
  scores = prediction_files.read(path, source.labels, names, synonyms=synonyms, ignored=ignored,
                                 unknown_tags=config.eval.get("unknown_tags", "error"),
                                 stats=stats)
  meta = {"kind": "predictions", "dataset": config.dataset, "split": split,
          "file": pathlib.Path(path).name, "synonyms": synonyms_file or "tag_synonyms.json",
          "unknown_tags": config.eval.get("unknown_tags", "error"),
          "unknown_tag_count": stats.get("unknown_tags", 0),
          "protocol": dict(protocol.record(config, source, split, y), image_size="n/a",
                           backbone=f"external predictions ({pathlib.Path(path).name})")}
  out = workdir_lib.eval_dir(workdir, split)
  with workdir_lib.staged(out / f"predictions_{pathlib.Path(path).stem}") as staging:
    m = results.save(staging, scores, y, source.labels, meta, config)
  if workdir_lib.is_chief():
    report.write(out)
  return m
