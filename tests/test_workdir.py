"""The workdir contract: config.json written once, relaunches checked, one writer, whole files."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from conftest import ROOT, one_error_line
from mlc_jax import runner, workdir as workdir_lib
from mlc_jax.errors import UserError


def _tree_digest(directory, skip=(".lock",)):
  """{relative path: sha256} of every file below directory."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      if name in skip:
        continue
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def finished(shapes_config, tmp_path_factory):
  """A finished workdir: features, a 1-epoch head and its evaluation."""
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  config.stages = ("features", "head", "evaluate")
  config.head.epochs, config.head.hidden = 1, (16,)
  workdir = tmp_path_factory.mktemp("finished")
  runner.train_and_evaluate(config, str(workdir))
  return config, workdir


def test_a_relaunch_that_would_change_what_was_trained_is_refused(finished):
  config, workdir = finished
  before = _tree_digest(workdir)
  for key, value in (("image_size", 48), ("data.resize", "crop"), ("head.learning_rate", 0.1)):
    changed = ml_collections.ConfigDict(config.to_dict())
    section, _, field = key.rpartition(".")
    (changed[section] if section else changed)[field] = value
    with pytest.raises(UserError) as e:
      runner.train_and_evaluate(changed, str(workdir))
    old = json.dumps(workdir_lib.read_config(workdir)[section][field] if section
                     else workdir_lib.read_config(workdir)[field])
    assert f"{key}: {old} -> {json.dumps(value)}" in str(e.value)
    assert "new --workdir" in str(e.value) and "--accept_config_change" in str(e.value)
    assert "delete" not in str(e.value).lower()
  assert _tree_digest(workdir) == before  # config.json, checkpoints, eval/: untouched


def test_a_change_to_the_model_shapes_is_refused_even_when_accepted(finished):
  config, workdir = finished
  before = _tree_digest(workdir)
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.head.hidden = (32,)
  with pytest.raises(UserError, match=r"head.hidden: \[16\] -> \[32\].*new --workdir"):
    runner.train_and_evaluate(changed, str(workdir), accept_config_change=True)
  assert _tree_digest(workdir) == before


def test_free_keys_may_change_and_finished_work_is_not_redone(finished, capsys):
  config, workdir = finished
  before = _tree_digest(workdir, skip=(".lock", "metrics.jsonl"))
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.eval_batch_size, changed.log_every_steps = 8, 3
  summary = runner.train_and_evaluate(changed, str(workdir))
  assert "test: mAP" in summary
  # Same checkpoint, same evaluation settings: nothing was rewritten.
  assert _tree_digest(workdir, skip=(".lock", "metrics.jsonl")) == before


def test_an_accepted_change_is_recorded(shapes_config, tmp_path):
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  labels = ["a", "b"]
  workdir_lib.record_config(config, tmp_path, labels)
  first = (tmp_path / "config.json").read_text()
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.finetune.learning_rate = 0.5
  with pytest.raises(UserError, match=r"finetune.learning_rate: 0.0001 -> 0.5"):
    workdir_lib.record_config(changed, tmp_path, labels)
  assert (tmp_path / "config.json").read_text() == first
  workdir_lib.record_config(changed, tmp_path, labels, accept_change=True)
  (record,) = [json.loads(l) for l in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
  assert record["changes"] == {"finetune.learning_rate": [0.0001, 0.5]}
  assert record["stages_done"] == []
  assert workdir_lib.read_config(tmp_path).finetune.learning_rate == 0.5
  with pytest.raises(UserError, match="labels.txt holds 2 labels"):
    workdir_lib.record_config(changed, tmp_path, ["a", "b", "c"])


def test_a_key_an_older_config_json_lacks_counts_as_its_default(shapes_config, tmp_path):
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  workdir_lib.record_config(config, tmp_path, ["a"])
  (tmp_path / ".config.json.sha256").unlink()  # as an older version wrote it: no digest record
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["augment"]["color_jitter"]  # written before the key existed; default 0.0
  (tmp_path / "config.json").write_text(json.dumps(saved))
  workdir_lib.record_config(config, tmp_path, ["a"])


def test_an_older_int_head_hidden_equals_its_tuple(shapes_config, tmp_path):
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  config.head.hidden = (16,)
  workdir_lib.record_config(config, tmp_path, ["a"])
  (tmp_path / ".config.json.sha256").unlink()  # as an older version wrote it: no digest record
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["head"]["hidden"] == [16]
  saved["head"]["hidden"] = 16  # as config.json was written before head.hidden took a tuple
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert workdir_lib.config_changes(workdir_lib.read_config(tmp_path), config) == {}
  saved["head"]["hidden"] = 0
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert workdir_lib.config_changes(workdir_lib.read_config(tmp_path), config) == {
      "head.hidden": ([], [16])}


_HOLD = """
import sys, time
from mlc_jax import workdir
with workdir.lock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(60)
"""


def test_one_writer_per_workdir_and_a_dead_holder_frees_it(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.time()
    with pytest.raises(UserError, match=rf"in use by pid {holder.pid} on host"):
      with workdir_lib.lock(tmp_path):
        pass
    assert time.time() - start < 5  # at once, not after a wait
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lib.lock(tmp_path):  # the kernel released the dead holder's lock
    pass


def test_a_truncated_last_metrics_line_is_dropped(tmp_path, caplog):
  rows = [{"stage": "head", "epoch": 1, "step": 6}, {"stage": "head", "epoch": 2, "step": 12}]
  workdir_lib.write_metrics(tmp_path, rows)
  with open(workdir_lib.metrics_path(tmp_path), "a") as f:
    f.write('{"stage": "head", "epo')  # a kill mid-write
  assert workdir_lib.read_metrics(tmp_path) == rows
  assert "truncated last line 3" in caplog.text
  workdir_lib.truncate_metrics(tmp_path, "head", 6)
  assert workdir_lib.metrics_path(tmp_path).read_text() == json.dumps(rows[0]) + "\n"
  workdir_lib.metrics_path(tmp_path).write_text('{"a": 1}\nnot json\n{"b": 2}\n')
  with pytest.raises(UserError, match="line 2 is not JSON"):
    workdir_lib.read_metrics(tmp_path)


def test_staged_outputs_appear_all_together_or_not_at_all(tmp_path):
  (tmp_path / "metrics.json").write_text("old")
  (tmp_path / "report.md").write_text("old report")
  with pytest.raises(RuntimeError):
    with workdir_lib.staged(tmp_path) as staging:
      (staging / "metrics.json").write_text("new")
      raise RuntimeError("plotting failed")
  assert (tmp_path / "metrics.json").read_text() == "old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.md"]
  with workdir_lib.staged(tmp_path) as staging:
    (staging / "metrics.json").write_text("new")
    (staging / "scores.npz").write_text("new scores")
  assert (tmp_path / "metrics.json").read_text() == "new"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.md", "scores.npz"]


# -- files read back are checked against what wrote them (mlc_jax.files.checked) -----------------------

def _copy(workdir, to):
  import shutil
  shutil.copytree(workdir, to, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
  return to


def test_a_digest_record_catches_truncation_and_edits_and_survives_a_kill(tmp_path):
  from mlc_jax.files import checked
  p = tmp_path / "f.json"
  checked.write_text(p, '{"a": 1}')
  assert checked.problem(p) is None
  p.write_text('{"a":')
  assert checked.problem(p) == "it is 5 bytes, not the 8 written (truncated)"
  p.write_text('{"a": 2}')
  assert checked.problem(p) == "it changed after it was written (its sha256 differs from .f.json.sha256)"
  checked.write_text(p, '{"a": 1}')
  # a kill after the record of the next write, before its file: the old file still checks
  checked._write_record(p, 8, hashlib.sha256(b'{"a": 3}').hexdigest())
  assert checked.problem(p) is None
  checked.record_path(p).unlink()  # written by an older version: trusted as it is
  assert checked.problem(p) is None


def test_a_truncated_config_json_is_one_line_in_every_mode(finished, tmp_path, capsys):
  import types
  from mlc_jax import cli
  config, workdir = finished
  workdir = _copy(workdir, tmp_path / "w")
  p = workdir / "config.json"
  size = p.stat().st_size
  p.write_bytes(p.read_bytes()[:100])
  flags = types.SimpleNamespace(accept_config_change=False, split="test", which="best",
                                stage=None, predictions=None, images=str(workdir), top_k=1,
                                output=str(tmp_path / "out"), format="stablehlo")
  for mode, given in (("train", config), ("evaluate", None), ("export", None), ("predict", None)):
    flags.output = str(tmp_path / ("out.csv" if mode == "predict" else "out"))
    line = one_error_line(capsys, lambda: cli.run(mode, given, str(workdir), flags))
    assert line == (f"error: {p}: it is 100 bytes, not the {size} written (truncated); it records "
                    "what was trained here and cannot be rebuilt: restore it from a backup or "
                    "train in a new --workdir (if you edited it on purpose, delete "
                    f"{workdir / '.config.json.sha256'} to accept it)"), mode
  (workdir / ".config.json.sha256").unlink()  # an older workdir: no record, the JSON error
  line = one_error_line(capsys, lambda: cli.run("evaluate", None, str(workdir), flags))
  assert line.startswith(f"error: {p}: it is not a JSON config (")


def test_a_hand_edited_labels_txt_is_refused(finished, tmp_path):
  import mlc_jax
  _, workdir = finished
  workdir = _copy(workdir, tmp_path / "w")
  labels = (workdir / "labels.txt").read_text().splitlines()
  labels[0], labels[1] = labels[1], labels[0]  # the same names, renaming two outputs
  (workdir / "labels.txt").write_text("\n".join(labels) + "\n")
  with pytest.raises(UserError, match=r"labels.txt: it changed after it was written .*names the "
                     r"checkpoints' outputs in order and cannot be rebuilt: restore the file"):
    mlc_jax.load(workdir)


def test_garbage_thresholds_are_ignored_with_a_notice_and_evaluate_tunes_them_again(
    finished, tmp_path, caplog):
  import mlc_jax
  from mlc_jax.eval import evaluate
  _, workdir = finished
  workdir = _copy(workdir, tmp_path / "w")
  p = next(workdir.glob("checkpoints/*/thresholds.json"))
  original = json.loads(p.read_text())
  p.write_text("garbage{")
  assert mlc_jax.load(workdir).thresholds is None  # 0.5 everywhere, said in one notice
  assert f"{p}: it is 8 bytes, not the " in caplog.text and "ignoring it (0.5" in caplog.text
  evaluate.evaluate(workdir)  # no dead end: evaluation writes them again
  assert json.loads(p.read_text()) == original


def test_a_truncated_feature_cache_is_rebuilt_with_a_notice(finished, tmp_path, caplog):
  config, workdir = finished
  workdir = _copy(workdir, tmp_path / "w")
  (f,) = workdir.glob("features/*/train_features.npy")
  whole = f.read_bytes()
  f.write_bytes(whole[:len(whole) // 2])
  runner.train_and_evaluate(config, str(workdir))  # features run again; head and evaluate done
  assert f"the cache is damaged ({f}: it is {len(whole) // 2} bytes, not the {len(whole)} " \
         "written (truncated or replaced)); rebuilding it" in caplog.text
  assert f.read_bytes() == whole


# The keys a relaunch may change (the workdir contract: they cannot change what a finished stage
# trained or which checkpoint evaluation picks), written out here rather than read from the code.
MAY_CHANGE = {"log_every_steps", "eval_batch_size", "distributed", "stages",
              "checkpoint.every_steps", "data.data_dir", "data.manual_dir", "data.cache_mb",
              "model.cache_dir", "model.weights_url"}
MAY_CHANGE_SECTIONS = ("eval.", "sweep.")


def _other_value(value):
  """A different value of the same kind."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 3
  if isinstance(value, str):
    return value + "_x"
  if isinstance(value, tuple):
    return value[:-1] if value else (("x", None),)
  raise AssertionError(f"no other value for {value!r}")


def test_a_relaunch_is_refused_for_every_key_but_the_free_ones(tmp_path):
  """Walks every key of the config table: changing it in a relaunch is refused (naming it) unless
  it is one of the keys the contract lets change (e.g. checkpoint.best_metric is refused: it
  decides which checkpoint evaluation calls best)."""
  from mlc_jax import config as config_lib
  base = config_lib.get_config()
  workdir_lib.record_config(base, tmp_path, ["a", "b"])
  flat = config_lib.flatten(base)
  assert "checkpoint.best_metric" in flat and len(flat) > 90
  for key, value in flat.items():
    changed = ml_collections.ConfigDict(base.to_dict())
    section, _, field = key.rpartition(".")
    node = changed
    for part in section.split(".") if section else ():
      node = node[part]
    node[field] = _other_value(value)
    if key in MAY_CHANGE or key.startswith(MAY_CHANGE_SECTIONS):
      workdir_lib.record_config(changed, tmp_path, ["a", "b"])
    else:
      with pytest.raises(UserError, match=f"{key}: "):
        workdir_lib.record_config(changed, tmp_path, ["a", "b"])
  assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
      config_lib.resolve_paths(base).to_json())


def test_a_key_an_older_config_json_lacks_is_refused_at_another_value(tmp_path):
  """config.json written before a key existed: a relaunch at that key's default is no change; at
  another value it is refused, showing the default as the old value."""
  from mlc_jax import config as config_lib
  base = config_lib.get_config()
  workdir_lib.record_config(base, tmp_path, ["a"])
  (tmp_path / ".config.json.sha256").unlink()  # as an older version wrote it: no digest record
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["finetune"]["ema_warmup"], saved["loss"]["unknown"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  workdir_lib.record_config(base, tmp_path, ["a"])  # the defaults: nothing changed
  changed = ml_collections.ConfigDict(base.to_dict())
  changed.loss.unknown = "negative"
  with pytest.raises(UserError, match='loss.unknown: "ignore" -> "negative"'):
    workdir_lib.record_config(changed, tmp_path, ["a"])
