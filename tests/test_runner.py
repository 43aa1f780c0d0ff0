"""train_and_evaluate end to end on the tiny shapes set: artefacts, resume, NaN guard, bad configs."""
import json
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import ROOT, subprocess_env
from mlc_jax import checkpoints, restore, runner
from mlc_jax.errors import UserError


def _config(shapes_config, **stages):
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.head.epochs = stages.get("head", 1)
  c.finetune.epochs = stages.get("finetune", 1)
  c.finetune.unfreeze_blocks = "2"
  c.finetune.learning_rate = 1e-2
  c.head.hidden = (16,)
  c.log_every_steps = 2
  return c


def _rows(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _params(workdir, weights=None):
  from mlc_jax import models
  return models.flat_params(restore.restore_model(workdir, which="latest",
                                                      weights=weights).model)


@pytest.fixture(scope="module")
def full_run(shapes_config, tmp_path_factory):
  """Every stage once: features, head (1 epoch), finetune (1 epoch), evaluate."""
  workdir = tmp_path_factory.mktemp("full_run")
  config = _config(shapes_config)
  summary = runner.train_and_evaluate(config, str(workdir))
  return workdir, config, summary


def test_every_stage_leaves_its_artefacts(full_run):
  workdir, config, summary = full_run
  assert (workdir / "labels.txt").read_text().split() == list(
      __import__("mlc_jax.data.datasets.shapes", fromlist=["CLASSES"]).CLASSES)
  assert json.loads((workdir / "config.json").read_text())["finetune"]["unfreeze_blocks"] == "2"
  rows = _rows(workdir)
  assert [(r["stage"], r["epoch"], r["step"]) for r in rows] == [("head", 1, 6), ("finetune", 1, 6)]
  for r in rows:
    assert {"train_loss", "val_loss", "val_mAP", "val_CF1_top3", "val_OF1_top3"} <= set(r)
    assert np.isfinite(r["train_loss"]) and 0 <= r["val_mAP"] <= 1
  for stage in ("head", "finetune"):
    assert checkpoints.is_done(workdir, stage)
  (cache,) = (workdir / "features").iterdir()
  feats = np.load(cache / "train_features.npy", mmap_mode="r")
  labels = np.load(cache / "val_labels.npy")
  assert feats.shape == (96, 32) and labels.shape == (32, 8)  # width 1/16: 512/16 features
  assert list((workdir / "tensorboard").iterdir())
  # test mAP recomputed independently: the restored Classifier on the test files, then sklearn.
  from sklearn.metrics import average_precision_score

  import mlc_jax
  from trained_run import split_files
  test_metrics = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  paths, _ = split_files(config, "test", workdir / "test_files")
  scores = mlc_jax.load(workdir).predict(paths)
  from mlc_jax.data import registry
  truth = registry.get(config).label_matrix("test")
  assert truth.shape == scores.shape == (32, 8)
  has = truth.sum(axis=0) > 0
  expected = average_precision_score(truth[:, has], scores[:, has], average="macro")
  assert test_metrics["metrics"]["mAP"] == pytest.approx(expected, rel=1e-4)
  assert f"test: mAP {test_metrics['metrics']['mAP']:.4f}" in summary
  assert "checkpoints/finetune" in summary


def test_features_cache_is_keyed(full_run, shapes_config):
  from mlc_jax import models, parallel
  from mlc_jax.data import registry
  from mlc_jax.train import features
  workdir, config, _ = full_run
  source = registry.get(config)
  model = models.build_model(config, 8)
  (before,) = (workdir / "features").iterdir()
  stamp = (before / "train_features.npy").stat().st_mtime_ns
  assert features.ensure(config, workdir, source, model.backbone, parallel.mesh(), 16) == before
  assert (before / "train_features.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
  other = ml_collections.ConfigDict(config.to_dict())
  other.data.resize = "crop"  # another preprocessing -> another key
  assert features.cache_key(other, source, model.backbone) != before.name
  reseeded = models.build_model(config, 8, rngs=__import__("flax").nnx.Rngs(7))
  assert features.cache_key(config, source, reseeded.backbone) != before.name


def test_rerun_skips_finished_stages(full_run):
  workdir, config, _ = full_run
  before = _rows(workdir)
  c = ml_collections.ConfigDict(config.to_dict())
  c.stages = ("head", "finetune")
  runner.train_and_evaluate(c, str(workdir))
  assert _rows(workdir) == before


def _finetune_config(shapes_config):
  c = _config(shapes_config, finetune=2)
  c.stages = ("finetune",)
  c.finetune.optimizer = "adam"
  c.finetune.learning_rate = 1e-3
  c.finetune.ema_decay = 0.9  # the moving average must resume exactly too
  return c


@pytest.fixture(scope="module")
def uninterrupted(shapes_config, tmp_path_factory):
  """Reference for the resume tests: two finetune epochs in one go."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  runner.train_and_evaluate(_finetune_config(shapes_config), str(workdir))
  return workdir


def _same_run(a, b):
  """Same metrics rows (but wall time) and bit-identical final parameters."""
  strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")}
                       for r in rows]
  assert strip(_rows(a)) == strip(_rows(b))
  for weights in ("regular", "ema"):
    pa, pb = _params(a, weights), _params(b, weights)
    assert pa.keys() == pb.keys()
    for k in pa:
      np.testing.assert_array_equal(pa[k], pb[k], err_msg=f"{weights} {k}")


def test_resume_after_an_epoch_equals_uninterrupted(shapes_config, uninterrupted, tmp_path,
                                                    monkeypatch):
  from mlc_jax.data import pipeline
  real = pipeline.batches

  def stop_in_second_epoch(*args, epoch=0, **kw):
    if kw.get("train") and epoch == 1:
      raise KeyboardInterrupt("simulated stop")
    return real(*args, epoch=epoch, **kw)

  config = _finetune_config(shapes_config)
  monkeypatch.setattr(pipeline, "batches", stop_in_second_epoch)
  with pytest.raises(KeyboardInterrupt):
    runner.train_and_evaluate(config, str(tmp_path))
  assert not checkpoints.is_done(tmp_path, "finetune")
  assert len(_rows(tmp_path)) == 1
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"stage": "finetune", "epo')  # and a kill mid-write of the log's next line
  monkeypatch.setattr(pipeline, "batches", real)
  runner.train_and_evaluate(config, str(tmp_path))
  _same_run(tmp_path, uninterrupted)


def _launch_command(config, tmp_path, name="config"):
  config_file = tmp_path / f"{name}.py"
  config_file.write_text(
      "import json, ml_collections\n"
      f"def get_config():\n  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n")
  workdir = tmp_path / "run"
  return [sys.executable, "launch.py", f"--config={config_file}", f"--workdir={workdir}"], workdir


def _truncate_arrays(step_dir):
  for path in (step_dir / "model").rglob("*"):
    if path.is_file() and path.stat().st_size > 64 and "metadata" not in path.name:
      with open(path, "r+b") as f:
        f.truncate(16)


def test_stops_kills_and_disk_faults_resume_to_the_uninterrupted_result(
    shapes_config, uninterrupted, tmp_path):
  """One workdir through every fault it survives, then exactly an uninterrupted run's result:
  1. SIGTERM mid-epoch (a preempted machine): the current step is saved and the run ends with one
     line; a second run started meanwhile fails at once, naming the first, and touches nothing;
  2. kill -9 while saves are in flight (a save every step), then a disk fault in the newest step:
     the rerun sets that step aside and resumes from the one before it.
  """
  import signal
  import time
  config = _finetune_config(shapes_config)
  cmd, workdir = _launch_command(config, tmp_path)
  ckpt = workdir / "checkpoints" / "finetune"
  env = subprocess_env()

  # 1. SIGTERM mid-epoch, with a second run tried while the first is held (SIGSTOP) mid-epoch.
  first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  seen = []
  for line in first.stderr:  # its progress lines
    seen.append(line)
    if "finetune epoch 1/2 step 2/6" in line:
      break
  assert first.poll() is None, "".join(seen[-20:])
  first.send_signal(signal.SIGSTOP)
  try:
    before = sorted(str(p) for p in workdir.rglob("*"))
    start = time.time()
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert f"is in use by pid {first.pid} on host" in second.stderr
    assert time.time() - start < 60 and "Traceback" not in second.stderr
    assert sorted(str(p) for p in workdir.rglob("*")) == before
  finally:
    first.send_signal(signal.SIGCONT)
  first.send_signal(signal.SIGTERM)
  rest = first.stderr.read()
  assert first.wait(timeout=120) == 128 + signal.SIGTERM, rest[-3000:]
  (line,) = [l for l in rest.splitlines() if "stopped by SIGTERM" in l]
  stopped = int(line.split(" at step ")[1].split()[0])
  assert 2 <= stopped < 6 and "Traceback" not in rest  # mid-epoch, saved, no stack dump
  assert checkpoints.steps_on_disk(workdir, "finetune")[-1] == stopped

  # 2. Resume with a save every step (a free key) and kill -9 inside the second epoch.
  config.checkpoint.every_steps = 1
  cmd, _ = _launch_command(config, tmp_path, "every_step")
  log = tmp_path / "killed.log"
  with open(log, "w") as err:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if ckpt.is_dir() and any(p.name.isdigit() and int(p.name) >= 8 for p in ckpt.iterdir()):
        break
      time.sleep(0.05)
    proc.kill()
    proc.wait()
  assert f"resuming from step {stopped} (epoch 1, batch {stopped})" in log.read_text()
  assert not checkpoints.is_done(workdir, "finetune"), "the run finished before the kill"
  steps = checkpoints.steps_on_disk(workdir, "finetune")
  assert len(steps) >= 2 and steps[-1] >= 8
  _truncate_arrays(ckpt / str(steps[-1]))  # and a disk fault in the newest step
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"checkpoint {ckpt / str(steps[-1])} cannot be restored" in done.stderr
  assert f"resuming from step {steps[-2]}" in done.stderr and "Traceback" not in done.stderr
  assert [p.name for p in ckpt.iterdir() if ".damaged-" in p.name] == [
      p.name for p in ckpt.iterdir() if p.name.startswith(f"{steps[-1]}.damaged-")] != []
  _same_run(workdir, uninterrupted)


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(shapes_config, tmp_path,
                                                               monkeypatch):
  from mlc_jax.data import pipeline
  real = pipeline.batches

  def nan_labels_in_second_epoch(*args, epoch=0, **kw):
    for batch in real(*args, epoch=epoch, **kw):
      if kw.get("train") and epoch == 1:
        batch = dict(batch, labels=np.full(batch["labels"].shape, np.nan, np.float32))
      yield batch

  monkeypatch.setattr(pipeline, "batches", nan_labels_in_second_epoch)
  config = _finetune_config(shapes_config)
  with pytest.raises(UserError, match=r"training loss became nan .* last good checkpoint"):
    runner.train_and_evaluate(config, str(tmp_path))
  assert not checkpoints.is_done(tmp_path, "finetune")
  assert len(_rows(tmp_path)) == 1
  mngr = checkpoints.Manager(tmp_path, "finetune", read_only=True)
  assert mngr.latest_step() == 6
  assert all(np.all(np.isfinite(v)) for v in _params(tmp_path).values())


def test_unknown_and_bad_config_values_fail_before_any_work(shapes_config, tmp_path):
  c = _config(shapes_config)
  c.finetune.unfreez_blocks = 2
  with pytest.raises(UserError, match="finetune.unfreez_blocks"):
    runner.train_and_evaluate(c, str(tmp_path / "a"))
  for key, value, name in [("finetune.unfreeze_blocks", "7", "unfreeze_blocks"),
                           ("loss.name", "hinge", "loss.name"),
                           ("finetune.optimizer", "lbfgs", "finetune.optimizer"),
                           ("checkpoint.best_metric", "f1", "best_metric"),
                           ("stages", ("features", "train"), "stages")]:
    c = _config(shapes_config)
    section, _, field = key.rpartition(".")
    (c[section] if section else c)[field] = value
    with pytest.raises(UserError, match=name):
      runner.train_and_evaluate(c, str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_launch_rejects_a_mistyped_override(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
       "--config.finetune.unfreez_blocks=2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "unfreez_blocks" in proc.stderr
  assert not (tmp_path / "w").exists()
