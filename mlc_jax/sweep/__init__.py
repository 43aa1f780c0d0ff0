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
from mlc_jax.sweep.placement import placements
from mlc_jax.sweep.space import parse_space, trial_config
from mlc_jax.sweep.study import run

__all__ = ["placements", "parse_space", "run", "trial_config"]
