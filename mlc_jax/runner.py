"""`train_and_evaluate`: every unfinished stage of config.stages in a workdir, then the evaluation.

It sits above mlc_jax.train and mlc_jax.eval, which do not import each other. Before any work:
the config is validated (alone, against the devices, against the dataset), the workdir is locked
(a second run in it fails at once), and the config is checked against the workdir's config.json
(mlc_jax.workdir). Finished stages are skipped; the unfinished one resumes from its latest
checkpoint with the same data order and random keys, so the result equals an uninterrupted run.
"""
import json

import jax
from absl import logging

from mlc_jax import checkpoints, config as config_lib, parallel, workdir as workdir_lib
from mlc_jax.data import registry
from mlc_jax.errors import UserError
from mlc_jax.eval import evaluate
from mlc_jax.train import loop, stages


def _summary(workdir, config, metrics=None):
  """The closing lines: test metrics (this run's evaluation, else the one an earlier run of this
  workdir wrote), the final checkpoint and the report."""
  path = workdir_lib.eval_dir(workdir, "test") / "metrics.json"
  if metrics is None:
    metrics = json.loads(path.read_text()).get("metrics", {}) if path.exists() else {}
  k = int(config.eval.k)
  parts = [f"{name} {metrics[name]:.4f}" for name in ("mAP", f"CF1_top{k}", f"OF1_top{k}")
           if isinstance(metrics.get(name), (int, float))]
  lines = ["test: " + (", ".join(parts) or "not evaluated (add 'evaluate' to config.stages)")]
  try:
    lines.append(f"checkpoint: {workdir_lib.checkpoint_dir(workdir, checkpoints.final_stage(workdir))}")
  except UserError:
    pass
  report = path.with_name("report.md")
  if report.exists():
    lines.append(f"report: {report}")
  return "\n".join(lines)


def train_and_evaluate(config, workdir, *, accept_config_change=False, on_epoch=None):
  """Runs (or resumes) every stage of config.stages in workdir; returns the summary text.

  accept_config_change: continue a workdir whose config.json differs from config in keys that
  change what is trained (recorded in config_changes.jsonl); otherwise such a relaunch is refused.
  on_epoch(row): called with each epoch's metrics.jsonl row once it is saved and logged (a sweep
  reports it to its pruner; what it raises ends the run, the epoch's checkpoint kept).
  """
  config_lib.validate(config)
  registry.check(config)
  parallel.initialize(config)
  mesh = parallel.mesh()
  config_lib.validate(config, mesh)
  workdir = str(workdir_lib.path(workdir))
  with workdir_lib.lock(workdir):
    source = registry.get(config)
    config_lib.validate(config, mesh, source)
    config = workdir_lib.record_config(config, workdir, source.labels,
                                       accept_change=accept_config_change)
    evaluated = None
    run = loop.Run(config=config, workdir=workdir, source=source, labels=list(source.labels),
                   mesh=mesh, on_epoch=on_epoch)
    try:
      for stage in config.stages:
        if stage in config_lib.TRAINED_STAGES and checkpoints.is_done(workdir, stage):
          logging.info("%s: already done in %s, skipping", stage, workdir)
          continue
        logging.info("stage %s", stage)
        if stage == "evaluate":
          if evaluate.is_current(workdir, "test", config):
            logging.info("evaluate: %s already holds this checkpoint's evaluation, skipping",
                         workdir_lib.eval_dir(workdir, "test"))
            continue
          evaluated = evaluate.evaluate(workdir, split="test", source=source, mesh=mesh,
                                        run_config=config)
        else:
          stages.RUNNERS[stage](run)
    finally:
      run.close()
  summary = _summary(workdir, config, evaluated)
  if jax.process_index() == 0:
    print(summary, flush=True)
  return summary
