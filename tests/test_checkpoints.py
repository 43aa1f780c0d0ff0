"""mlc_jax.checkpoints: which step is 'best', thresholds tied to their checkpoint, damaged steps.

Workdirs are made by hand (config.json, labels.txt, Orbax steps of models with known values), so
each test knows exactly which parameters every step holds.
"""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from flax import nnx

import mlc_jax
from conftest import ROOT, subprocess_env
from mlc_jax import checkpoints, models, restore
from mlc_jax.data import registry
from mlc_jax.eval import evaluate

VAL_LOSS = (0.5, 0.3, 0.4)  # three epochs: the second is best by loss, the first by these as mAP


def _workdir(shapes_config, workdir, best_metric="val_loss", stages=("head",)):
  """A workdir whose stages each hold steps 1-3 of models seeded 1-3 -> {(stage, step): params}."""
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  config.head.hidden = (8,)
  config.checkpoint.best_metric = best_metric
  source = registry.get(config)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json(indent=2))
  (workdir / "labels.txt").write_text("\n".join(source.labels) + "\n")
  saved = {}
  for offset, stage in enumerate(stages):
    mngr = checkpoints.Manager(workdir, stage, best_metric)
    for step, value in enumerate(VAL_LOSS, 1):
      model = models.build_model(config, len(source.labels), rngs=nnx.Rngs(10 * offset + step))
      mngr.save(step, checkpoints.model_state(model), {"step": np.int64(step)},
                metrics={"val_loss": value, "val_mAP": value})
      saved[(stage, step)] = models.flat_params(model)
    mngr.close()
  return config, saved


def _same(params, expected):
  assert params.keys() == expected.keys()
  for k in params:
    np.testing.assert_array_equal(params[k], expected[k], err_msg=k)


@pytest.mark.parametrize("best_metric, best_step", [("val_loss", 2), ("val_mAP", 1)])
def test_best_is_the_lowest_loss_or_the_highest_map(shapes_config, tmp_path, best_metric,
                                                    best_step):
  _, saved = _workdir(shapes_config, tmp_path, best_metric)
  best = restore.restore_model(tmp_path, which="best")
  assert (best.stage, best.step) == ("head", best_step)
  _same(models.flat_params(best.model), saved[("head", best_step)])
  latest = restore.restore_model(tmp_path, which="latest")
  assert latest.step == 3
  _same(models.flat_params(latest.model), saved[("head", 3)])


def test_thresholds_stay_with_the_checkpoint_they_were_tuned_for(shapes_config, tmp_path):
  _workdir(shapes_config, tmp_path, stages=("head", "finetune"))
  thresholds = tmp_path / "checkpoints" / "finetune" / "thresholds.json"
  evaluate.evaluate(str(tmp_path), split="test")  # the best finetune step (2)
  best_entry = json.loads(thresholds.read_text())["2"]
  evaluate.evaluate(str(tmp_path), split="test", which="latest")  # step 3
  doc = json.loads(thresholds.read_text())
  assert doc["2"] == best_entry and set(doc) == {"2", "3"}
  clf = mlc_jax.load(tmp_path)
  assert clf.checkpoint == "finetune/2"
  np.testing.assert_array_equal(clf.thresholds, np.float32(best_entry["thresholds"]))
  latest = mlc_jax.load(tmp_path, which="latest")
  np.testing.assert_array_equal(latest.thresholds, np.float32(doc["3"]["thresholds"]))
  # The head stage was never evaluated: its checkpoint has no tuned thresholds (0.5 applies).
  head = mlc_jax.load(tmp_path / "checkpoints" / "head")
  assert head.checkpoint == "head/2" and head.thresholds is None
  assert not (tmp_path / "checkpoints" / "head" / "thresholds.json").exists()
  # A step folder: its own thresholds, or none.
  step3 = mlc_jax.load(tmp_path / "checkpoints" / "finetune" / "3")
  np.testing.assert_array_equal(step3.thresholds, np.float32(doc["3"]["thresholds"]))
  assert mlc_jax.load(tmp_path / "checkpoints" / "head" / "3").thresholds is None


def _truncate_arrays(step_dir):
  for root, _, files in os.walk(step_dir / "model"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64 and "metadata" not in name:
        with open(path, "r+b") as f:
          f.truncate(16)


def test_a_damaged_latest_step_falls_back_to_the_one_before(shapes_config, tmp_path):
  config, saved = _workdir(shapes_config, tmp_path)
  head = tmp_path / "checkpoints" / "head"
  _truncate_arrays(head / "3")
  model = models.build_model(config, 8, rngs=nnx.Rngs(0))
  target = checkpoints.abstract_of(checkpoints.model_state(model))
  mngr = checkpoints.Manager(tmp_path, "head")
  step, restored = mngr.restore_latest_intact(target, None)
  mngr.close()
  assert step == 2
  checkpoints.load_model_state(model, restored["model"])
  _same(models.flat_params(model), saved[("head", 2)])
  kept = [p.name for p in head.iterdir() if p.name.startswith("3.damaged-")]
  assert len(kept) == 1 and not (head / "3").exists()  # kept for inspection, out of Orbax's way
  assert checkpoints.steps_on_disk(tmp_path, "head") == [2]  # step 1 left with the policy


def test_restoring_a_damaged_step_for_use_says_what_to_do(shapes_config, tmp_path):
  _workdir(shapes_config, tmp_path)
  _truncate_arrays(tmp_path / "checkpoints" / "head" / "2")
  with pytest.raises(checkpoints.CheckpointError) as e:
    mlc_jax.load(tmp_path)
  message = str(e.value)
  assert "checkpoints/head/2 is damaged" in message and "--which=latest" in message
  assert "delete" not in message.lower() and len(message) < 600
  assert mlc_jax.load(tmp_path, which="latest").checkpoint == "head/3"


def _save_steps(config, tmp_path, losses, best_metric="val_loss"):
  mngr = checkpoints.Manager(tmp_path, "head", best_metric)
  saved = {}
  for step, value in enumerate(losses, 1):
    model = models.build_model(config, 8, rngs=nnx.Rngs(step))
    mngr.save(step, checkpoints.model_state(model), {"step": np.int64(step)},
              metrics={"val_loss": value, "val_mAP": value})
    saved[step] = models.flat_params(model)
  mngr.close()
  return saved


def test_kept_steps_are_the_latest_two_and_the_best(shapes_config, tmp_path):
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  config.head.hidden = (8,)
  # Step 1 is best by loss, 2 by mAP (the same numbers): loss keeps {1, 4, 5}, mAP {2, 4, 5}.
  _save_steps(config, tmp_path / "loss", (0.1, 0.5, 0.4, 0.3, 0.2))
  assert checkpoints.steps_on_disk(tmp_path / "loss", "head") == [1, 4, 5]
  _save_steps(config, tmp_path / "map", (0.1, 0.5, 0.4, 0.3, 0.2), "val_mAP")
  assert checkpoints.steps_on_disk(tmp_path / "map", "head") == [2, 4, 5]


def test_a_damaged_latest_step_that_was_best_falls_back_to_the_one_before(shapes_config, tmp_path):
  """The latest step is also the best (falling loss): the one before it must still be kept, and a
  resume after the latest is damaged starts from it."""
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  config.head.hidden = (8,)
  saved = _save_steps(config, tmp_path, (0.5, 0.4, 0.3))
  assert checkpoints.steps_on_disk(tmp_path, "head") == [2, 3]
  _truncate_arrays(tmp_path / "checkpoints" / "head" / "3")
  model = models.build_model(config, 8, rngs=nnx.Rngs(0))
  mngr = checkpoints.Manager(tmp_path, "head")
  step, restored = mngr.restore_latest_intact(
      checkpoints.abstract_of(checkpoints.model_state(model)), None)
  mngr.close()
  assert step == 2
  checkpoints.load_model_state(model, restored["model"])
  _same(models.flat_params(model), saved[2])


@pytest.mark.parametrize("best_metric, head, finetune", [
    ("val_loss", "val_loss", "val_loss"), ("val_mAP_ema", "val_mAP", "val_mAP_ema"),
    ("val_loss_ema", "val_loss", "val_loss_ema")])
def test_best_metric_ema_ranks_the_finetune_stage_only(best_metric, head, finetune):
  """checkpoint.best_metric = val_*_ema: the finetune stage ranks by it and its best weights are
  the EMA's; the head stage keeps no EMA and ranks by the plain metric."""
  config = ml_collections.ConfigDict({"checkpoint": {"best_metric": best_metric}})
  assert checkpoints.best_metric_of(config, "head") == head
  assert checkpoints.best_metric_of(config, "finetune") == finetune
  assert checkpoints.weights_of(config, "head") == "regular"
  assert checkpoints.weights_of(config, "finetune") == ("ema" if "ema" in best_metric
                                                        else "regular")




# A save that meets a full disk at the directory argv[2] while its other writers are still busy (a
# slow directory creation): the one line is said, and the process exits at once. A writer left
# running fails at interpreter shutdown with a traceback ('cannot schedule new futures'); writers
# waiting on the signal of a failed directory creation would hold the process for 5 minutes.
SAVE_ON_A_FILLING_DISK = """
import asyncio, errno, sys
import jax.numpy as jnp
from orbax.checkpoint._src.path import async_path
from mlc_jax import checkpoints
from mlc_jax.files import disk
real = async_path.mkdir
async def filling(path, *a, **k):
  if sys.argv[2] in str(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
  await asyncio.sleep(1.0)
  return await real(path, *a, **k)
async_path.mkdir = filling
mngr = checkpoints.Manager(sys.argv[1], "head")
try:
  mngr.save(3, {"w": jnp.arange(4.0)}, {"n": jnp.arange(3)}, metrics={"val_loss": 1.0})
  mngr.wait()
except disk.DiskError as e:
  print("error:", e, file=sys.stderr)
  sys.exit(1)
"""


@pytest.mark.parametrize("refused, what", [
    ("model.orbax-checkpoint-tmp/array_metadatas", "a checkpoint"),
    ("model.orbax-checkpoint-tmp", "a checkpoint (step 3 or the one before)")])
def test_a_failed_save_stops_its_writers_before_the_process_exits(tmp_path, refused, what):
  proc = subprocess.run([sys.executable, "-c", SAVE_ON_A_FILLING_DISK, str(tmp_path), refused],
                        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "shutdown" not in proc.stderr, proc.stderr[-3000:]
  assert [l for l in proc.stderr.splitlines() if l.startswith(("E", "error"))] == [
      f"error: could not write {what} in {tmp_path}/checkpoints/head: no space left on the "
      "device; nothing saved before is lost; free some space there and run the same command to "
      "continue"], proc.stderr[-3000:]
