"""--mode=sweep: the grid once over, one feature computation for all trials, refused trials
recorded, a bad space refused before any trial, and the best command reproducing its trial."""
import ast
import json
import os
import pathlib

import ml_collections
import pytest

from mlc_jax import runner, sweep, workdir as workdir_lib
from mlc_jax.errors import UserError
from mlc_jax.train import features


def _config(shapes_config, space, sampler="grid", n_trials=4):
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.stages, c.head.epochs = ("features", "head", "evaluate"), 2
  c.sweep.update(space=space, sampler=sampler, n_trials=n_trials)
  return c


def _trials(sweep_dir):
  import optuna
  return optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir / 'study.db'}").trials


def test_grid_once_over_one_feature_cache_and_a_rerun_adds_nothing(shapes_config, tmp_path,
                                                                   monkeypatch):
  writes = []
  real = features._write_split
  monkeypatch.setattr(features, "_write_split", lambda tmp, split, *a: (writes.append(split),
                                                                        real(tmp, split, *a)))
  space = (("head.learning_rate", ("categorical", (1e-3, 3e-3))),
           ("head.hidden", ("categorical", ((8,), (16,)))))
  config = _config(shapes_config, space)
  report = sweep.run(config, tmp_path, config_path="configs/x.py")
  trials = _trials(tmp_path)
  got = sorted((t.user_attrs["params"]["head.learning_rate"],
                tuple(t.user_attrs["params"]["head.hidden"])) for t in trials)
  assert got == sorted((lr, h) for lr in (1e-3, 3e-3) for h in ((8,), (16,)))  # each once
  assert writes == ["train", "val", "test"]  # the bottleneck features, computed once for all 4
  for t in trials:  # the value is the best validation epoch of the trial's own log
    rows = workdir_lib.read_metrics(t.user_attrs["workdir"])
    assert t.value == max(r["val_mAP"] for r in rows if r["stage"] == "head")
    assert not (tmp_path / "trials" / f"{t.number:04d}" / "eval").exists()  # test never read
  text = report.read_text()
  assert "4 trials done, 0 pruned, 0 failed" in text and text.count("| complete |") == 4
  sweep.run(config, tmp_path)  # a rerun continues up to n_trials: nothing left to do
  assert len(_trials(tmp_path)) == 4 and writes == ["train", "val", "test"]

  best = max(trials, key=lambda t: t.value)
  line = next(l.strip() for l in text.splitlines() if l.strip().startswith("python launch.py"))
  assert line.startswith("python launch.py --config=configs/x.py --workdir=runs/best --config.")
  again = ml_collections.ConfigDict(config.to_dict())  # the command's flags, applied by hand
  for flag in line.split(" --config.")[1:]:
    key, value = flag.split("=", 1)
    section, field = key.split(".")
    again[section][field] = ast.literal_eval(value.strip("'"))
  again.stages = ("features", "head")
  runner.train_and_evaluate(again, str(tmp_path / "best"))
  rows = workdir_lib.read_metrics(tmp_path / "best")
  assert max(r["val_mAP"] for r in rows if r["stage"] == "head") == best.value


def test_a_refused_trial_is_recorded_and_the_study_goes_on(shapes_config, tmp_path):
  config = _config(shapes_config, (("head.dropout", ("categorical", (0.2, 1.5))),), n_trials=2)
  text = sweep.run(config, tmp_path).read_text()
  assert "1 trials done, 0 pruned, 1 failed" in text
  failed = [l for l in text.splitlines() if "| fail:" in l]
  assert len(failed) == 1 and "head.dropout=1.5" in failed[0]
  assert json.loads(failed[0].split(" | ")[2]) == {"head.dropout": 1.5}


@pytest.mark.parametrize("space, sampler, message", [
    ((), "tpe", "sweep.space is empty"),
    ((("head.learning_rate", ("log", 1e-4, 1e-2)),), "grid", "grid sampler needs categorical"),
    ((("head.learnig_rate", ("log", 1e-4, 1e-2)),), "tpe", "'head.learnig_rate' is not a config key"),
    ((("head.learning_rate", ("normal", 0, 1)),), "tpe", "kind 'normal' is not one of"),
    ((("head.learning_rate", ("log", 0.0, 1e-2)),), "tpe", "low < high and low > 0"),
    ((("head.hidden", ("categorical", ())),), "tpe", "write \\('categorical', \\(value"),
    ((("stages", ("categorical", (("head",),))),), "tpe", "'stages' is not a config key a trial"),
])
def test_a_bad_space_fails_before_any_trial(shapes_config, tmp_path, space, sampler, message):
  with pytest.raises(UserError, match=message):
    sweep.run(_config(shapes_config, space, sampler), tmp_path / "s")
  assert not (tmp_path / "s").exists()


def test_a_trial_left_running_by_a_killed_process_is_marked_and_the_study_goes_on(
    shapes_config, tmp_path):
  import optuna
  config = _config(shapes_config, (("head.learning_rate", ("categorical", (1e-3, 3e-3))),),
                   sampler="random", n_trials=3)
  study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="sweep",
                              direction="maximize")
  study.ask()  # trial 0 started, then its process was killed (no tell)
  text = sweep.run(config, tmp_path).read_text()
  trials = _trials(tmp_path)
  # n_trials counts trials that ran to an end: three more; trial 0 drew no parameters, so there
  # is nothing to resume
  assert [t.number for t in trials] == [0, 1, 2, 3] and trials[0].state.name == "FAIL"
  assert [t.state.name for t in trials[1:]] == ["COMPLETE"] * 3
  assert "| 0 | - | {} |  |  | fail: interrupted: its process died mid-trial |" in text
  assert "3 trials done, 0 pruned, 1 failed" in text


def test_a_second_command_on_a_local_study_fails_at_once(shapes_config, tmp_path):
  config = _config(shapes_config, (("head.learning_rate", ("categorical", (1e-3,))),))
  with workdir_lib.lock(tmp_path):  # the first command, still running
    with pytest.raises(UserError, match="in use by pid"):
      sweep.run(config, tmp_path)
  assert not (tmp_path / "study.db").exists()


def test_two_workers_share_one_study_and_compute_the_features_once(shapes_config, tmp_path):
  config = _config(shapes_config, (("head.learning_rate", ("log", 1e-4, 1e-2)),),
                   sampler="random", n_trials=6)
  config.sweep.pruner = "none"
  text = sweep.run(config, tmp_path, workers=2).read_text()
  trials = _trials(tmp_path)
  assert [t.state.name for t in trials] == ["COMPLETE"] * 6  # the count never overshoots
  assert len({t.params["head.learning_rate"] for t in trials}) == 6  # six distinct draws
  assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both worked, in two processes
  assert len({t.user_attrs["pid"] for t in trials}) == 2
  caches = sorted(p.name for p in (tmp_path / "features").iterdir())
  assert len(caches) == 1 and not caches[0].startswith(".")  # one key, built once, no leftovers
  for t in trials:  # each value is its own trial's log: no trial's results crossed another's
    rows = workdir_lib.read_metrics(t.user_attrs["workdir"])
    assert t.value == max(r["val_mAP"] for r in rows) and len(rows) == 2
  assert "6 trials done, 0 pruned, 0 failed" in text


def test_pruning_stops_a_trial_below_the_median_at_its_epoch(shapes_config, tmp_path):
  import optuna
  config = _config(shapes_config, (("head.learning_rate", ("log", 1e-8, 1e-1)),), "tpe", 2)
  config.head.epochs = 3
  config.sweep.update(pruner="median", prune_startup_trials=1, prune_warmup_epochs=0)
  study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="sweep",
                              direction="maximize")
  study.enqueue_trial({"head.learning_rate": 3e-2})  # learns
  study.enqueue_trial({"head.learning_rate": 1e-8})  # does not move from its start
  text = sweep.run(config, tmp_path).read_text()
  first, second = (workdir_lib.read_metrics(tmp_path / "trials" / f"{n:04d}") for n in (0, 1))
  assert len(first) == 3 and first[0]["val_mAP"] > second[0]["val_mAP"]  # the median rule's case
  trials = _trials(tmp_path)
  assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
  assert len(second) == 1 and trials[1].last_step == 0  # stopped after its first epoch
  assert "| 1 | - | {\"head.learning_rate\": 1e-08} | 1 |" in text
  assert "pruned after epoch 1" in text and "1 trials done, 1 pruned, 0 failed" in text


def test_a_killed_sweep_resumes_its_running_trial_exactly(shapes_config, tmp_path, caplog):
  """kill -9 of the sweep mid-trial; the rerun marks the trial, resumes its workdir from its last
  checkpoint as a new trial (the same result as an uninterrupted run) and completes the grid."""
  import os
  import signal
  import subprocess
  import sys
  import time
  from conftest import ROOT, subprocess_env
  config = _config(shapes_config, (("head.learning_rate", ("categorical", (1e-3, 3e-3))),),
                   n_trials=2)
  config.head.epochs, config.sweep.pruner = 6, "none"
  config_file = tmp_path / "sweep_config.py"
  config_file.write_text(
      "import json, ml_collections\n"
      f"def get_config():\n  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n")
  sweep_dir = tmp_path / "sweep"
  proc = subprocess.Popen([sys.executable, "launch.py", "--mode=sweep", f"--config={config_file}",
                           f"--workdir={sweep_dir}"], cwd=ROOT, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  metrics = sweep_dir / "trials" / "0001" / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:  # the second trial, 2 epochs in
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      break
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert metrics.exists() and len(workdir_lib.read_metrics(metrics.parent)) < 6, "not mid-trial"
  import logging
  with caplog.at_level(logging.INFO):
    text = sweep.run(config, sweep_dir).read_text()
  assert "head: resuming from step" in caplog.text  # from the killed trial's checkpoint
  trials = _trials(sweep_dir)
  assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
  assert trials[2].user_attrs["resumes"] == 1 and trials[2].params == trials[1].params
  assert trials[2].user_attrs["workdir"] == str(metrics.parent)
  assert sorted(t.params["head.learning_rate"] for t in (trials[0], trials[2])) == sorted(
      json.dumps(v) for v in (1e-3, 3e-3))  # the grid once over, no duplicate
  assert "fail: interrupted: its process died mid-trial; resumed as trial 2" in text
  # exact: the resumed trial's log equals an uninterrupted run of its parameters
  fresh = tmp_path / "fresh"
  runner.train_and_evaluate(sweep.trial_config(config, trials[2].user_attrs["params"]), str(fresh))
  drop = ("seconds", "images_per_second")
  strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]
  assert strip(workdir_lib.read_metrics(metrics.parent)) == strip(workdir_lib.read_metrics(fresh))


def _fake_training(value_of):
  """A stand-in for runner.train_and_evaluate: per trained stage and epoch one metrics row whose
  val_mAP/val_loss are value_of(trial config, stage, epoch), passed to on_epoch as the runner
  does. The sweep's own logic (count, sampler, seed, objective, pruning) runs for real."""
  def train_and_evaluate(tc, workdir, on_epoch=None):
    for stage in tc.stages:
      if stage in ("head", "finetune"):
        for epoch in range(int(tc[stage].epochs)):
          m, loss = value_of(tc, stage, epoch)
          row = {"stage": stage, "epoch": epoch + 1, "val_mAP": m, "val_loss": loss}
          workdir_lib.append_metrics(workdir, row)
          if on_epoch is not None:
            on_epoch(row)
  return train_and_evaluate


@pytest.fixture
def fast_tmp(tmp_path):
  """A folder in memory where there is one (/dev/shm): each SQLite commit of a study syncs the
  disk (16 ms each here, hundreds per sweep); tmp_path elsewhere."""
  import shutil
  import tempfile
  if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
    yield tmp_path
    return
  folder = tempfile.mkdtemp(prefix="mlc_jax_sweep_", dir="/dev/shm")
  yield pathlib.Path(folder)
  shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fake_sweep(shapes_config, monkeypatch):
  """(config over head.dropout in [0, 1], run(config, dir) -> trials) with fake training and
  no plots (they are not what these tests check)."""
  from mlc_jax.sweep import report
  monkeypatch.setattr(report, "plots", lambda study, directory: {})
  config = _config(shapes_config, (("head.dropout", ("float", 0.0, 1.0)),), "random", 5)
  config.sweep.pruner = "none"

  def run(c, sweep_dir, value_of=lambda tc, stage, epoch: (tc.head.dropout, tc.head.dropout)):
    monkeypatch.setattr(runner, "train_and_evaluate", _fake_training(value_of))
    sweep.run(c, sweep_dir)
    return _trials(sweep_dir) if not c.sweep.storage else __import__("optuna").load_study(
        study_name="sweep", storage=c.sweep.storage).trials
  return config, run


def test_sweep_n_trials_seed_and_storage(fake_sweep, fast_tmp):
  """sweep.n_trials: that many trials, a rerun with more continues the study (the same first 5
  draws); sweep.seed: another seed draws other values; sweep.storage: the study lives at that URL
  instead of SWEEPDIR/study.db."""
  config, run = fake_sweep
  first = [t.params["head.dropout"] for t in run(config, fast_tmp / "a")]
  assert len(first) == 5
  config.sweep.n_trials = 7
  more = [t.params["head.dropout"] for t in run(config, fast_tmp / "a")]
  assert len(more) == 7 and more[:5] == first
  config.sweep.n_trials, config.sweep.seed = 5, 1
  config.sweep.storage = f"sqlite:///{fast_tmp / 'elsewhere.db'}"
  other = [t.params["head.dropout"] for t in run(config, fast_tmp / "b")]
  assert len(other) == 5 and not set(other) & set(first)  # seed 1: other draws
  assert (fast_tmp / "elsewhere.db").exists() and not (fast_tmp / "b" / "study.db").exists()


def test_sweep_sampler_grid_random_and_tpe(fake_sweep, fast_tmp):
  """sweep.sampler: grid runs each of 3 values once although n_trials is 6; random runs 6 (so
  a value repeats); tpe, after its 10 random start-up trials, draws nearer the best value (0.2
  of val_mAP = 1 - |dropout - 0.2|) than those start-up draws were."""
  config, run = fake_sweep
  config.sweep.update(space=(("head.dropout", ("categorical", (0.1, 0.5, 0.9))),), n_trials=6)
  config.sweep.sampler = "grid"
  assert sorted(t.params["head.dropout"] for t in run(config, fast_tmp / "grid")) == [
      "0.1", "0.5", "0.9"]  # categorical values travel as JSON
  config.sweep.sampler = "random"
  values = [t.params["head.dropout"] for t in run(config, fast_tmp / "random")]
  assert len(values) == 6 and len(set(values)) < 6
  config.sweep.update(space=(("head.dropout", ("float", 0.0, 1.0)),), n_trials=20)
  peak = lambda tc, stage, epoch: (1 - abs(tc.head.dropout - 0.2), abs(tc.head.dropout - 0.2))
  config.sweep.sampler = "tpe"
  trials = run(config, fast_tmp / "tpe", peak)
  distance = [abs(t.params["head.dropout"] - 0.2) for t in trials]
  assert sum(distance[10:]) < 0.5 * sum(distance[:10])


@pytest.mark.parametrize("objective", ["val_mAP", "val_loss"])
def test_sweep_objective_is_the_best_epoch_of_the_last_stage_in_its_direction(fake_sweep,
                                                                               fast_tmp, objective):
  """sweep.objective: val_mAP is maximised, val_loss minimised; a trial's value is the best
  epoch (max of val_mAP, min of val_loss) of the last trained stage's rows (finetune here; the
  head stage's rows, larger, do not count). Values by hand from the fake rows."""
  config, run = fake_sweep
  config.stages, config.finetune.epochs = ("features", "head", "finetune"), 3
  config.sweep.objective = objective
  rows = lambda tc, stage, epoch: ((10.0, 10.0) if stage == "head" else
                                   (tc.head.dropout * (1, 3, 2)[epoch],) * 2)
  trials = run(config, fast_tmp, rows)
  for t in trials:
    x = t.params["head.dropout"]
    assert t.value == pytest.approx(3 * x if objective == "val_mAP" else x)
  best = (max if objective == "val_mAP" else min)(trials, key=lambda t: t.value)
  report = (fast_tmp / "report.md").read_text()
  assert f"Best: trial {best.number}, {objective} {best.value:.4f}" in report


def test_sweep_pruning_waits_for_start_up_trials_and_warm_up_epochs(fake_sweep, fast_tmp):
  """sweep.pruner median with sweep.prune_startup_trials = 2 and sweep.prune_warmup_epochs = 2
  over head (2 epochs) + finetune (2 epochs), epochs counted over both stages: trial n scores
  1 - 0.1 n every epoch, so trials 0 and 1 run to their end, and 2, 3 are below the median from
  the start but pruned only at overall epoch index 2 (finetune's first epoch): 3 rows each."""
  config, run = fake_sweep
  config.stages, config.finetune.epochs = ("features", "head", "finetune"), 2
  config.sweep.update(pruner="median", prune_startup_trials=2, prune_warmup_epochs=2, n_trials=4)
  score = lambda tc, stage, epoch: (1 - tc.head.dropout, tc.head.dropout)
  import optuna
  study = optuna.create_study(storage=f"sqlite:///{fast_tmp / 'study.db'}", study_name="sweep",
                              direction="maximize")
  for n in range(4):
    study.enqueue_trial({"head.dropout": 0.1 * n})
  trials = run(config, fast_tmp, score)
  assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
  assert [t.last_step for t in trials] == [3, 3, 2, 2]
  assert [len(workdir_lib.read_metrics(fast_tmp / "trials" / f"{n:04d}")) for n in range(4)] == [
      4, 4, 3, 3]


def test_a_sweep_over_the_backbone_computes_each_backbones_features_once(shapes_config, tmp_path,
                                                                        monkeypatch):
  """model.arch in the space: each trial trains on its own backbone's features, computed once per
  backbone (the shared cache keeps one key each), and its value is its own log's best epoch."""
  writes = []
  real = features._write_split
  monkeypatch.setattr(features, "_write_split", lambda tmp, split, *a: (writes.append(split),
                                                                        real(tmp, split, *a)))
  space = (("model.arch", ("categorical", ("vgg16", "resnet50"))),
           ("head.learning_rate", ("categorical", (1e-3, 3e-3))))
  config = _config(shapes_config, space)
  sweep.run(config, tmp_path)
  trials = _trials(tmp_path)
  got = sorted((t.user_attrs["params"]["model.arch"], t.user_attrs["params"]["head.learning_rate"])
               for t in trials)
  assert got == sorted((a, lr) for a in ("vgg16", "resnet50") for lr in (1e-3, 3e-3))
  assert writes == ["train", "val", "test"] * 2  # once per backbone, not per trial
  keys = {}
  for t in trials:
    workdir = pathlib.Path(t.user_attrs["workdir"])
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["arch"] == t.user_attrs["params"]["model.arch"]
    rows = workdir_lib.read_metrics(workdir)
    assert t.value == max(r["val_mAP"] for r in rows if r["stage"] == "head")
    keys.setdefault(saved["model"]["arch"], set()).add(
        features.cache_key(ml_collections.ConfigDict(saved), *_source_and_backbone(saved)))
  assert all(len(k) == 1 for k in keys.values()) and len(set.union(*keys.values())) == 2
  assert sorted(p.name for p in (tmp_path / "features").iterdir() if not p.name.startswith(".")) \
      == sorted(set.union(*keys.values()))


def _source_and_backbone(saved):
  from mlc_jax import models
  from mlc_jax.data import registry
  config = ml_collections.ConfigDict(saved)
  return registry.get(config), models.build_backbone(config)
