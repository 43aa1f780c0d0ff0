"""--mode=sweep: an Optuna study over config keys; each trial a workdir, one shared feature cache.

  python launch.py --mode=sweep --config=configs/sweep_demo.py --workdir=SWEEPDIR

config.sweep.space lists (key, spec) pairs, spec one of
  ('categorical', (v1, v2, ...))   ('int', low, high)   ('float', low, high)   ('log', low, high)
sampled by sweep.sampler ('grid': every combination once, categorical and int only; 'random';
'tpe'), sweep.n_trials in all (a rerun continues the study up to it). The study lives in
SWEEPDIR/study.db (SQLite). A trial runs the config's stages except `evaluate` in
SWEEPDIR/trials/NNNN, whose features/ is SWEEPDIR/features: trials that agree on backbone,
weights, data and image size compute the bottleneck features once (mlc_jax.train.features keys
the cache). Its value is sweep.objective (a validation metric of the last trained stage, best
epoch; never the test split). A trial whose config is refused (a UserError) is recorded as failed
with its message and the study goes on. SWEEPDIR/report.md: the trials sorted by value and the
best one as a runnable command. Trials run one after another in this process (a second command
on the same local study fails at once, naming the first); a trial left
running by a killed process is marked failed ('interrupted') when the command is run again, and
the study goes on up to n_trials. sweep.storage (an Optuna RDB URL, e.g. PostgreSQL) lets the
same command on several machines share one study.
"""
import contextlib
import json
import math
import os
import pathlib
import shlex
import time

import ml_collections

from mlc_jax import config as config_lib
from mlc_jax import workdir as workdir_lib
from mlc_jax.errors import UserError

SAMPLERS = ("grid", "random", "tpe")
KINDS = ("categorical", "int", "float", "log")
OBJECTIVES = ("val_mAP", "val_loss", "val_CF1_top3", "val_OF1_top3")


def parse_space(config):
  """config.sweep.space -> [(key, kind, args)], or UserError naming the entry and the fix."""
  s = config.sweep
  if s.sampler not in SAMPLERS:
    raise UserError(f"sweep.sampler={s.sampler!r}: choose one of {', '.join(SAMPLERS)}")
  if s.objective not in OBJECTIVES:
    raise UserError(f"sweep.objective={s.objective!r}: choose one of {', '.join(OBJECTIVES)}")
  if not isinstance(s.n_trials, int) or s.n_trials < 1:
    raise UserError(f"sweep.n_trials={s.n_trials!r}: must be an integer >= 1")
  if not s.space:
    raise UserError("sweep.space is empty: give ((key, spec), ...), e.g. "
                    "(('head.learning_rate', ('log', 1e-4, 1e-2)),)")
  flat, space = config_lib.flatten(json.loads(config.to_json())), []
  for entry in s.space:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2
            and isinstance(entry[1], (tuple, list)) and entry[1]):
      raise UserError(f"sweep.space entry {entry!r}: write (key, (kind, ...)) with kind one of "
                      f"{', '.join(KINDS)}")
    key, (kind, *args) = entry
    if key not in flat or key.startswith("sweep.") or key == "stages":
      raise UserError(f"sweep.space: {key!r} is not a config key a trial can set")
    if kind not in KINDS:
      raise UserError(f"sweep.space {key}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "categorical" and not (len(args) == 1 and isinstance(args[0], (tuple, list))
                                      and args[0]):
      raise UserError(f"sweep.space {key}: write ('categorical', (value, value, ...))")
    if kind != "categorical" and not (len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
                                      and args[0] < args[1] and (kind != "log" or args[0] > 0)):
      raise UserError(f"sweep.space {key}: write ('{kind}', low, high) with low < high"
                      + (" and low > 0" if kind == "log" else ""))
    if s.sampler == "grid" and kind in ("float", "log"):
      raise UserError(f"sweep.space {key}: the grid sampler needs categorical or int ranges, "
                      f"not {kind}; list the values with ('categorical', (...))")
    space.append((key, kind, tuple(args[0]) if kind == "categorical" else tuple(args)))
  return space


def _grid(space):
  """Optuna's grid search space: {key: [JSON-able values]} (tuples stored as JSON strings)."""
  grid = {}
  for key, kind, args in space:
    values = list(args) if kind == "categorical" else list(range(int(args[0]), int(args[1]) + 1))
    grid[key] = [json.dumps(v) for v in values]
  return grid


def _suggest(trial, space):
  """{key: value} sampled for trial (categorical values travel as JSON strings)."""
  params = {}
  for key, kind, args in space:
    if kind == "categorical":
      params[key] = json.loads(trial.suggest_categorical(key, [json.dumps(v) for v in args]))
    elif kind == "int":
      params[key] = trial.suggest_int(key, int(args[0]), int(args[1]))
    else:
      params[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == "log")
  return params


def trial_config(base, params):
  """The base config with params set (lists back to tuples where the key holds one)."""
  c = ml_collections.ConfigDict(base.to_dict())
  for key, value in params.items():
    section, _, field = key.rpartition(".")
    node = c
    for part in filter(None, section.split(".")):
      node = node[part]
    if isinstance(node[field], tuple) and isinstance(value, list):
      value = tuple(value)
    if isinstance(node[field], float) and isinstance(value, int):
      value = float(value)
    node[field] = value
  c.stages = tuple(s for s in base.stages if s != "evaluate")  # the test split stays unread
  return c


def objective_value(workdir, name):
  """The best epoch's `name` over the last trained stage's rows of WORKDIR/metrics.jsonl."""
  rows = workdir_lib.read_metrics(workdir)
  stages = [r["stage"] for r in rows if name in r]
  if not stages:
    raise UserError(f"{workdir}: no epoch logged {name}")
  values = [r[name] for r in rows if r.get("stage") == stages[-1] and name in r]
  return min(values) if name == "val_loss" else max(values)


def command(config_path, workdir, params):
  """A launch.py command that trains the trial's config."""
  flags = [f"--config.{k}={shlex.quote(str(tuple(v) if isinstance(v, list) else v))}"
           for k, v in sorted(params.items())]
  return " ".join(["python launch.py", f"--config={config_path}", f"--workdir={workdir}", *flags])


def run(config, sweep_dir, config_path="CONFIG", overrides=None):
  """Runs the study in sweep_dir up to config.sweep.n_trials trials; returns the report path.

  config_path and overrides (the command line's --config.KEY values) go into the best command."""
  import optuna  # noqa: PLC0415 - only this mode needs it
  from mlc_jax import runner  # noqa: PLC0415 - TensorFlow and JAX start with the first trial
  space = parse_space(config)  # a bad space fails before any trial
  config_lib.validate(config)
  sweep_dir = pathlib.Path(sweep_dir).expanduser().resolve()
  (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
  (sweep_dir / "features").mkdir(exist_ok=True)
  direction = "minimize" if config.sweep.objective == "val_loss" else "maximize"
  seed = int(config.sweep.seed)
  sampler = {"grid": lambda: optuna.samplers.GridSampler(_grid(space), seed=seed),
             "random": lambda: optuna.samplers.RandomSampler(seed=seed),
             "tpe": lambda: optuna.samplers.TPESampler(seed=seed)}[config.sweep.sampler]()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  local = not config.sweep.storage
  # one command per local study: a second fails at once, naming the first (workdir.lock)
  with workdir_lib.lock(sweep_dir) if local else contextlib.nullcontext():
    storage = f"sqlite:///{sweep_dir / 'study.db'}" if local else config.sweep.storage
    study = optuna.create_study(storage=storage, study_name="sweep", direction=direction,
                                sampler=sampler, load_if_exists=True)
    if local:  # nobody else works on a local study: a trial still running died with its process
      for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:
          study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    def objective(trial):
      params = _suggest(trial, space)
      workdir = sweep_dir / "trials" / f"{trial.number:04d}"
      workdir.mkdir(parents=True, exist_ok=True)
      if not (workdir / "features").exists():
        os.symlink(sweep_dir / "features", workdir / "features")  # one cache for every trial
      trial.set_user_attr("params", params)
      trial.set_user_attr("workdir", str(workdir))
      start = time.time()
      try:
        runner.train_and_evaluate(trial_config(config, params), str(workdir))
      except UserError as e:
        trial.set_user_attr("error", str(e))
        raise
      finally:
        trial.set_user_attr("seconds", round(time.time() - start, 1))
      value = objective_value(workdir, config.sweep.objective)
      print(f"sweep trial {trial.number + 1}/{config.sweep.n_trials}: {config.sweep.objective} "
            f"{value:.4f} in {time.time() - start:.0f} s, {json.dumps(params)}", flush=True)
      return value

    finished = lambda: [t for t in study.trials if t.state.is_finished()]
    while len(finished()) < config.sweep.n_trials:
      if config.sweep.sampler == "grid" and len(finished()) >= math.prod(
          len(v) for v in _grid(space).values()):
        break  # every combination ran once
      study.optimize(objective, n_trials=1, catch=(UserError,))
    return write_report(study, sweep_dir, config, config_path, overrides or {})


def write_report(study, sweep_dir, config, config_path, overrides):
  """SWEEPDIR/report.md: trials sorted by value (failed ones last, with their message), and the
  best trial as a command."""
  name = config.sweep.objective
  done = [t for t in study.trials if t.value is not None]
  done.sort(key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
  failed = [t for t in study.trials if t.value is None and t.state.is_finished()]
  lines = [f"# Sweep: {len(done)} trials done, {len(failed)} failed\n",
           f"Objective: {name} ({study.direction.name.lower()}), best epoch of the last trained "
           f"stage, validation split; sampler {config.sweep.sampler}.\n",
           f"| trial | {name} | params | seconds | state |", "|---|---|---|---|---|"]
  for t in done + failed:
    value = f"{t.value:.4f}" if t.value is not None else "-"
    why = t.user_attrs.get("error", "interrupted: its process died mid-trial")
    state = t.state.name.lower() + (f": {why}" if t.state.name == "FAIL" else "")
    lines.append(f"| {t.number} | {value} | {json.dumps(t.user_attrs.get('params', t.params))} | "
                 f"{t.user_attrs.get('seconds', '')} | {state} |")
  if done:
    best = done[0]
    lines += ["", f"Best: trial {best.number}, {name} {best.value:.4f}. To train it again:", "",
              "    " + command(config_path, "runs/best",
                          {**{k: v for k, v in overrides.items() if not k.startswith("sweep.")},
                           **best.user_attrs["params"]})]
  path = sweep_dir / "report.md"
  workdir_lib.write_text(path, "\n".join(lines) + "\n")
  print(f"sweep: {len(done)} trials done, {len(failed)} failed; report {path}", flush=True)
  return path
