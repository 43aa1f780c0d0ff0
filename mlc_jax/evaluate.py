"""--mode=evaluate and --mode=baseline: test metrics, report.md and plots in WORKDIR/eval/SPLIT.

evaluate(workdir): the best checkpoint on the split (thresholds 0.5, and per-class thresholds tuned
on the validation split, reported apart and saved to WORKDIR/thresholds.json);
evaluate(workdir, predictions=FILE): a tagging service's predictions file, same metrics;
baseline(config, workdir): ImageNet VGG16 without fine-tuning (mlc_jax.baselines).
Each writes its result and rewrites report.md, which sets every result found side by side.
"""
import json
import pathlib

import jax
import ml_collections
from absl import logging

from mlc_jax import metrics, plots, predictions as predictions_lib, report, results
from mlc_jax.baselines import baseline  # noqa: F401  (cli: evaluate.baseline)
from mlc_jax.errors import UserError

SPLITS = ("train", "val", "test")


def _with_eval(config, override):
  """The workdir's config with the `eval` section of `override` (the --config given), if any."""
  config = ml_collections.ConfigDict(config.to_dict())
  if override is not None and "eval" in override:
    config.eval = ml_collections.ConfigDict(override.eval.to_dict())
  return config


def _check_split(split):
  if split not in SPLITS:
    raise UserError(f"--split={split!r} is not one of {SPLITS}")


def write_thresholds(workdir, labels, thresholds, tuned_on):
  """WORKDIR/thresholds.json: per-class thresholds for Classifier.predict_labels."""
  path = pathlib.Path(workdir) / "thresholds.json"
  path.write_text(json.dumps({"labels": list(labels), "thresholds": [float(t) for t in thresholds],
                              "tuned_on": tuned_on}, indent=1))
  return path


def evaluate(workdir, split="test", which="best", predictions=None, config=None):
  """Evaluates a trained workdir (or a predictions file) on `split`; returns the metrics dict.

  Writes WORKDIR/eval/SPLIT/{metrics.json, scores.npz, report.md, *.png}. `config` (optional) only
  contributes its `eval` section, except for a predictions file, where it names the dataset.
  """
  _check_split(split)
  if predictions:
    return evaluate_predictions(workdir, predictions, split=split, config=config)
  from mlc_jax import checkpoints
  from mlc_jax.data import registry
  saved, labels, model = checkpoints.restore_model(workdir, which)
  config = _with_eval(saved, config)
  source = registry.get(config)
  if list(source.labels) != list(labels):
    raise UserError(f"{workdir}/labels.txt ({len(labels)} labels) does not match dataset "
                    f"{config.dataset} ({len(source.labels)} labels); evaluate on the dataset it "
                    "was trained on")
  activation = config.head.get("activation", "sigmoid")
  score = results.scorer(model, config, activation)
  scores, y, images = score(source, split, keep_images=int(config.eval.get("examples", 16)))
  tuned = None
  if config.eval.tune_thresholds and split != "val":
    val_scores, val_y, _ = score(source, "val", keep_images=0)
    thresholds = metrics.tune_thresholds(val_scores, val_y)
    if jax.process_index() == 0:
      write_thresholds(workdir, labels, thresholds, "val")
    tuned = {"thresholds": thresholds, "tuned_on": "val"}
  stage = checkpoints.final_stage_dir(workdir).name
  meta = {"kind": "model", "dataset": config.dataset, "split": split, "activation": activation,
          "checkpoint": f"{which} checkpoint of the {stage} stage"}
  eval_dir = pathlib.Path(workdir) / "eval" / split
  m = results.save(eval_dir, scores, y, labels, meta, config, images=images, tuned=tuned)
  if jax.process_index() != 0:
    return m
  plots.training_curves(plots.read_history(pathlib.Path(workdir) / "metrics.jsonl"),
                        eval_dir / "training_curves.png")
  path = report.write(eval_dir)
  logging.info("evaluate %s: mAP %.4f, CF1 %.4f, OF1 %.4f; report %s", split, m["mAP"], m["CF1"],
               m["OF1"], path)
  return m


def evaluate_predictions(workdir, path, split="test", config=None):
  """Scores a predictions file (CSV or JSON lines) against `split` of the config's dataset.

  The dataset comes from `config`, else from WORKDIR/config.json. Writes
  WORKDIR/eval/SPLIT/predictions_NAME and the report; returns the metrics dict.
  """
  from mlc_jax import checkpoints
  from mlc_jax.data import registry
  _check_split(split)
  if config is None:
    config = checkpoints.read_config(workdir)
  source = registry.get(config)
  names, y = predictions_lib.split_examples(source, split)
  synonyms_file = config.eval.get("synonyms", "")
  synonyms, ignored = predictions_lib.read_synonyms(synonyms_file)
  stats = {}
  scores = predictions_lib.read(path, source.labels, names, synonyms=synonyms, ignored=ignored,
                                unknown_tags=config.eval.get("unknown_tags", "error"), stats=stats)
  meta = {"kind": "predictions", "dataset": config.dataset, "split": split,
          "file": pathlib.Path(path).name, "synonyms": synonyms_file or "tag_synonyms.json",
          "unknown_tags": config.eval.get("unknown_tags", "error"),
          "unknown_tag_count": stats.get("unknown_tags", 0)}
  eval_dir = pathlib.Path(workdir) / "eval" / split
  out = eval_dir / f"predictions_{pathlib.Path(path).stem}"
  m = results.save(out, scores, y, source.labels, meta, config)
  if jax.process_index() == 0:
    report.write(eval_dir)
  return m
