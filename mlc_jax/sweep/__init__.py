"""--mode=sweep: an Optuna study over config keys; each trial a workdir, one shared feature cache.

  python launch.py --mode=sweep --config=configs/sweep_demo.py --workdir=SWEEPDIR [--sweep_workers=N]

config.sweep.space lists (key, spec) pairs (mlc_jax.sweep.space), sampled by sweep.sampler
('grid': every combination once, categorical and int only; 'random'; 'tpe'), sweep.n_trials in
all (a rerun continues the study up to it). The study lives in SWEEPDIR/study.db (SQLite). A trial
runs the config's stages except `evaluate` in SWEEPDIR/trials/NNNN, whose features/ is
SWEEPDIR/features: trials that agree on backbone, weights, data and image size compute the
bottleneck features once (mlc_jax.train.features keys the cache and builds each key once under a
file lock, so concurrent workers wait for the first instead of computing it again). Its value is
sweep.objective (a validation metric of the last trained stage, best epoch; never the test
split). Every epoch reports the objective to the pruner (sweep.pruner='median': Optuna's median
pruner; the epochs are counted over the trial's stages), which stops a trial worse than the
median of the earlier trials at the same epoch.

Workers: --sweep_workers=N starts N processes on this machine, each asking the study for the next
trial until n_trials are started; where there are several GPUs each worker sees its own (round
robin), on CPU each gets its own share of the cores (its CPU affinity, which XLA and tf.data
size their thread pools by). A trial is asked for under a file lock, so the count never overshoots
and the grid sampler never hands two workers the same point.

Faults: a trial whose config is refused (a UserError) is recorded as failed with its message and
the study goes on; a bad space is refused before any trial. A trial left running by a killed
process is marked failed ('interrupted') when the command is run again, and its parameters are
queued again as a new trial that resumes the killed one's workdir from its last checkpoint
(mlc_jax.runner resumes exactly), so the study still ends with n_trials results. A second command
on the same local study fails at once, naming the first. sweep.storage (an Optuna RDB URL, e.g.
PostgreSQL) lets the same command on several machines share one study (BUILD.md); there each
machine's workers count under their own lock, so the study may overshoot n_trials by up to one
trial per further machine, and a dead machine's trial stays 'running' in the study.
"""
import contextlib
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import time

import ml_collections
import numpy as np

from mlc_jax import config as config_lib
from mlc_jax import workdir as workdir_lib
from mlc_jax.errors import Stopped, UserError
from mlc_jax.sweep import report
from mlc_jax.sweep.space import parse_space, trial_config  # noqa: F401 - the public names
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


def placements(workers, cores=None, gpus=None):
  """[(cpu set, env)] for each local worker: its share of the cores and, with GPUs, its own."""
  cores = sorted(os.sched_getaffinity(0)) if cores is None else list(cores)
  gpus = _visible_gpus() if gpus is None else list(gpus)
  out = []
  for i in range(workers):
    share = cores[i::workers] or [cores[i % len(cores)]]
    env = {}
    if gpus:
      env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
      if workers > len(gpus):  # workers share a GPU: each takes memory as it needs it
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    out.append((share, env))
  return out


def _visible_gpus():
  """The GPU ids this process may use, without starting JAX (it would claim their memory)."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
  if not shutil.which("nvidia-smi"):
    return []
  try:
    lines = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                           check=False).stdout.splitlines()
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [str(i) for i, line in enumerate(l for l in lines if l.startswith("GPU "))]


def _worker_main(config_dict, sweep_dir, worker, cores, env):
  os.environ.update(env)
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cores)  # before JAX and TensorFlow size their thread pools
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
