"""The study behind --mode=sweep (the package doc says what it does): asks Optuna for trials, runs
each as a workdir under mlc_jax.runner, reports the objective, requeues interrupted trials, and
starts the local workers."""
import contextlib
import json
import math
import multiprocessing
import os
import pathlib
import time

import ml_collections
import numpy as np

from mlc_jax import config as config_lib
from mlc_jax import parallel, workdir as workdir_lib
from mlc_jax.data import registry
from mlc_jax.errors import Stopped, UserError
from mlc_jax.sweep import report
from mlc_jax.sweep.placement import placements
from mlc_jax.sweep.space import parse_space, trial_config
from mlc_jax.sweep import space as space_lib


def run(config, sweep_dir, config_path="CONFIG", overrides=None, workers=1):
  """Runs the study in sweep_dir up to config.sweep.n_trials trials; returns the report path.

  config_path and overrides (the command line's --config.KEY values) go into the best command;
  workers: local worker processes (1: trials run in this process)."""
  import optuna  # noqa: PLC0415 - only this mode needs it
  space = parse_space(config)  # a bad space fails before any trial
  if not isinstance(workers, int) or workers < 1:
    raise UserError(f"--sweep_workers={workers!r}: must be an integer >= 1")
  config_lib.validate(config)
  registry.check(config)
  sweep_dir = pathlib.Path(sweep_dir).expanduser().resolve()
  (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
  (sweep_dir / "features").mkdir(exist_ok=True)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  local = not config.sweep.storage
  # one command per local study: a second fails at once, naming the first (workdir.lock)
  with workdir_lib.lock(sweep_dir) if local else contextlib.nullcontext():
    study = _study(config, sweep_dir, space, worker=0)
    if local:  # nobody else works on a local study: a trial still running died with its process
      _requeue_interrupted(study)
    if workers == 1:
      _work(config, sweep_dir, space, worker=0)
    else:
      _run_workers(config, sweep_dir, workers)
    study = _study(config, sweep_dir, space, worker=0)
    return report.write_report(study, sweep_dir, config, config_path, overrides or {})


def _storage(config, sweep_dir):
  import optuna  # noqa: PLC0415
  if config.sweep.storage:
    return config.sweep.storage
  # several local workers write to one SQLite file: wait for its lock instead of failing
  return optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'study.db'}",
                                    engine_kwargs={"connect_args": {"timeout": 300}})


def _study(config, sweep_dir, space, worker):
  """The study, with this worker's sampler (seeded by seed, worker and the trials so far, so a
  rerun or a second worker does not repeat the first's draws) and pruner."""
  import optuna  # noqa: PLC0415
  s = config.sweep
  storage = _storage(config, sweep_dir)
  direction = "minimize" if s.objective == "val_loss" else "maximize"
  pruner = (optuna.pruners.MedianPruner(n_startup_trials=s.prune_startup_trials,
                                        n_warmup_steps=s.prune_warmup_epochs)
            if s.pruner == "median" else optuna.pruners.NopPruner())
  study = optuna.create_study(storage=storage, study_name="sweep", direction=direction,
                              pruner=pruner, load_if_exists=True)
  seed = int(np.random.SeedSequence([int(s.seed), worker, len(study.trials)]).generate_state(1)[0])
  study.sampler = {"grid": lambda: _grid_sampler(space_lib.grid(space), seed),
                   "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                   "tpe": lambda: optuna.samplers.TPESampler(seed=seed)}[s.sampler]()
  return study


def _grid_sampler(grid, seed):
  """Optuna's grid sampler without its study.stop() after each trial (only study.optimize allows
  it; _work asks and tells, and stops at the grid's size itself)."""
  import optuna  # noqa: PLC0415
  sampler = optuna.samplers.GridSampler(grid, seed=seed)
  sampler.after_trial = lambda study, trial, state, values: None
  return sampler


def _requeue_interrupted(study):
  """Marks each trial still 'running' failed and queues its parameters again, to resume its
  workdir (a kill before any parameter was drawn leaves nothing to resume)."""
  import optuna  # noqa: PLC0415
  for t in study.trials:
    if t.state != optuna.trial.TrialState.RUNNING:
      continue
    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    if t.params and "workdir" in t.user_attrs:
      study.enqueue_trial(t.params, user_attrs={"resumes": t.number,
                                                "workdir": t.user_attrs["workdir"]})


def _limit(config, space):
  n = int(config.sweep.n_trials)
  if config.sweep.sampler == "grid":  # every combination once
    n = min(n, math.prod(len(v) for v in space_lib.grid(space).values()))
  return n


def _work(config, sweep_dir, space, worker):
  """Asks the study for trials and runs them until n_trials are started (not counting ones a
  killed process left; their requeued copies count). Queued trials always run."""
  import optuna  # noqa: PLC0415
  study = _study(config, sweep_dir, space, worker)
  limit = _limit(config, space)
  waiting = optuna.trial.TrialState.WAITING
  while True:
    with workdir_lib.wait_lock(sweep_dir / ".ask.lock"):  # the count, the ask and the draw are one step among workers
      trials = study.get_trials(deepcopy=False)
      if not any(t.state == waiting for t in trials) and sum(
          not report.interrupted(t) for t in trials) >= limit:
        return
      trial = study.ask()
      params = space_lib.suggest(trial, space)
    _run_trial(study, trial, params, config, sweep_dir, worker, limit)


def _run_trial(study, trial, params, config, sweep_dir, worker, limit):
  import optuna  # noqa: PLC0415
  from mlc_jax import runner  # noqa: PLC0415 - TensorFlow and JAX start with the first trial
  name = config.sweep.objective
  workdir = pathlib.Path(trial.user_attrs.get("workdir",
                                              sweep_dir / "trials" / f"{trial.number:04d}"))
  workdir.mkdir(parents=True, exist_ok=True)
  if not (workdir / "features").exists():
    os.symlink(sweep_dir / "features", workdir / "features")  # one cache for every trial
  for key, value in (("params", params), ("workdir", str(workdir)), ("worker", worker),
                     ("pid", os.getpid())):
    trial.set_user_attr(key, value)
  tc = trial_config(config, params)
  offsets, total = {}, 0  # pruning steps: epochs counted over the trial's stages
  for stage in tc.stages:
    if stage in ("head", "finetune"):
      offsets[stage], total = total, total + int(tc[stage].epochs)

  def on_epoch(row):
    if name in row:
      trial.report(float(row[name]), offsets[row["stage"]] + row["epoch"] - 1)
      if trial.should_prune():
        raise optuna.TrialPruned()

  start = time.time()
  state, value = optuna.trial.TrialState.COMPLETE, None
  try:
    runner.train_and_evaluate(tc, str(workdir), on_epoch=on_epoch)
    value = report.objective_value(workdir, name)
  except optuna.TrialPruned:
    state = optuna.trial.TrialState.PRUNED
  except UserError as e:
    trial.set_user_attr("error", str(e))
    state = optuna.trial.TrialState.FAIL
  except (Stopped, KeyboardInterrupt):
    raise  # left running: the next command resumes it
  except Exception as e:
    trial.set_user_attr("error", f"crashed: {type(e).__name__}: {e}")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    raise
  trial.set_user_attr("seconds", round(time.time() - start, 1))
  trial.set_user_attr("epochs", len(workdir_lib.read_metrics(workdir)))
  study.tell(trial, value, state=state)
  done = sum(t.state.is_finished() and not report.interrupted(t) for t in study.trials)
  result = f"{name} {value:.4f}" if value is not None else report.state(study.trials[trial.number])
  print(f"sweep trial {trial.number} ({done}/{limit} done, worker {worker}): {result} in "
        f"{time.time() - start:.0f} s, {json.dumps(params)}", flush=True)


def _worker_main(config_dict, sweep_dir, worker, cores, env):
  os.environ.update(env)
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cores)  # before JAX and TensorFlow size their thread pools
  parallel.setup_process()  # a spawned worker is an entry point too
  config = ml_collections.ConfigDict(config_dict)
  _work(config, pathlib.Path(sweep_dir), parse_space(config), worker)


def _run_workers(config, sweep_dir, workers):
  ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no JAX state is forked
  procs = [ctx.Process(target=_worker_main, name=f"sweep worker {i}",
                       args=(config.to_dict(), str(sweep_dir), i, cores, env))
           for i, (cores, env) in enumerate(placements(workers))]
  for p in procs:
    p.start()
  try:
    for p in procs:
      p.join()
  except KeyboardInterrupt:
    for p in procs:
      p.terminate()  # each saves a checkpoint of its running trial (SIGTERM) and stops
    for p in procs:
      p.join()
    raise
  bad = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
  if bad:
    raise UserError(f"sweep: {', '.join(bad)} ended with an error (its message is above); the "
                    f"study in {sweep_dir} keeps every finished trial; run the same command to "
                    "continue it")
