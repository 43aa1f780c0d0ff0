"""The search space of a sweep: config.sweep.space parsed and checked, sampled, applied to a config.

  ('categorical', (v1, v2, ...))   ('int', low, high)   ('float', low, high)   ('log', low, high)

Categorical values travel through Optuna as JSON strings (so tuples such as head.hidden sizes are
stored and compared exactly) and come back as Python values; lists become tuples where the
config key holds one.
"""
import json
import shlex

import ml_collections

from mlc_jax import config as config_lib
from mlc_jax.errors import UserError

SAMPLERS = ("grid", "random", "tpe")
KINDS = ("categorical", "int", "float", "log")
OBJECTIVES = ("val_mAP", "val_loss", "val_CF1_top3", "val_OF1_top3")
PRUNERS = ("median", "none")


def parse_space(config):
  """config.sweep.space -> [(key, kind, args)], or UserError naming the entry and the fix."""
  s = config.sweep
  if s.sampler not in SAMPLERS:
    raise UserError(f"sweep.sampler={s.sampler!r}: choose one of {', '.join(SAMPLERS)}")
  if s.objective not in OBJECTIVES:
    raise UserError(f"sweep.objective={s.objective!r}: choose one of {', '.join(OBJECTIVES)}")
  if not isinstance(s.n_trials, int) or s.n_trials < 1:
    raise UserError(f"sweep.n_trials={s.n_trials!r}: must be an integer >= 1")
  if s.pruner not in PRUNERS:
    raise UserError(f"sweep.pruner={s.pruner!r}: choose one of {', '.join(PRUNERS)}")
  for key in ("prune_startup_trials", "prune_warmup_epochs"):
    if not isinstance(s[key], int) or s[key] < 0:
      raise UserError(f"sweep.{key}={s[key]!r}: must be an integer >= 0")
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


def grid(space):
  """Optuna's grid search space: {key: [JSON-able values]} (tuples stored as JSON strings)."""
  grid = {}
  for key, kind, args in space:
    values = list(args) if kind == "categorical" else list(range(int(args[0]), int(args[1]) + 1))
    grid[key] = [json.dumps(v) for v in values]
  return grid


def suggest(trial, space):
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
  """The base config with params set (ConfigDict turns a JSON list back into the key's tuple and
  an int into the key's float)."""
  c = ml_collections.ConfigDict(base.to_dict())
  for key, value in params.items():
    section, _, field = key.rpartition(".")
    node = c
    for part in filter(None, section.split(".")):
      node = node[part]
    node[field] = value
  c.stages = tuple(s for s in base.stages if s != "evaluate")  # the test split stays unread
  return c


def command(config_path, workdir, params):
  """A launch.py command that trains the trial's config."""
  flags = [f"--config.{k}={shlex.quote(str(tuple(v) if isinstance(v, list) else v))}"
           for k, v in sorted(params.items())]
  return " ".join(["python launch.py", f"--config={config_path}", f"--workdir={workdir}", *flags])


