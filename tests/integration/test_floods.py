"""One line, never a flood, never silence: a restore refused, SIGTERM outside the training loop,
a metrics row cut by a kill, and prediction from a run whose later stage has not finished."""
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import types

import ml_collections
import pytest

from conftest import ROOT, subprocess_env
from mlc_jax import checkpoints, cli, runner, workdir as workdir_lib
from mlc_jax.inference import predict
from trained_run import split_files, trained_workdir


def _copy(workdir, to):
  shutil.copytree(workdir, to, ignore=shutil.ignore_patterns(".lock"))
  return to


def _edit_config(workdir, **changes):
  """config.json edited as an older version would have left it (no digest record)."""
  p = workdir / "config.json"
  doc = json.loads(p.read_text())
  for key, value in changes.items():
    section, _, field = key.rpartition(".")
    (doc[section] if section else doc)[field] = value
  p.write_text(json.dumps(doc))
  (workdir / ".config.json.sha256").unlink()


def _tree(directory):
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _launch(*args, script=None):
  code = script or "import runpy, sys; sys.argv[0] = 'launch.py'; runpy.run_path('launch.py', run_name='__main__')"
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def _flags():
  return types.SimpleNamespace(accept_config_change=False, split="test", which="best",
                               stage=None, predictions=None)


def _exit_lines(capsys, call, status):
  """Runs call, which must end with SystemExit(status); -> stderr's lines, checked traceback-free."""
  with pytest.raises(SystemExit) as e:
    call()
  err = capsys.readouterr().err
  assert e.value.code == status, err[-3000:]
  for noise in ("Traceback", "Exception ignored", "Event loop is closed"):
    assert noise not in err, err[-3000:]
  return [l for l in err.splitlines() if l.strip()]


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line(shapes_config, tmp_path_factory,
                                                              tmp_path, capsys):
  trained, _ = trained_workdir(shapes_config, tmp_path_factory)
  workdir = _copy(trained, tmp_path / "w")
  _edit_config(workdir, **{"head.hidden": [7]})  # the checkpoint's head has other shapes
  (line,) = _exit_lines(capsys, lambda: cli.run("evaluate", None, str(workdir), _flags()), 1)
  assert line.startswith(f"error: checkpoint {workdir}/checkpoints/head/") and \
      "does not fit the model config.json describes" in line


class _Unhandled(Exception):
  """What this test's own SIGTERM handler raises: cli.run did not put its handler in place."""


@pytest.mark.parametrize("mode", ["train", "evaluate"])
def test_sigterm_while_features_build_or_evaluate_runs_is_one_line(
    mode, shapes_config, tmp_path_factory, tmp_path, capsys, monkeypatch):
  if mode == "train":  # the features stage of a new run
    from mlc_jax.train import features as module
    config = ml_collections.ConfigDict(shapes_config.to_dict())
    config.stages = ("features", "head")
    workdir, name, given = tmp_path / "w", "_write_split", config
  else:
    from mlc_jax.eval import results as module
    trained, _ = trained_workdir(shapes_config, tmp_path_factory)
    workdir, name, given = _copy(trained, tmp_path / "w"), "save", None
    before = _tree(workdir / "eval")
  real = getattr(module, name)

  def term_then_go_on(*args, **kwargs):  # a preempted machine, mid-stage
    signal.raise_signal(signal.SIGTERM)
    return real(*args, **kwargs)
  monkeypatch.setattr(module, name, term_then_go_on)

  def unhandled(signum, frame):
    raise _Unhandled("SIGTERM reached the default handler: the process would die silently")
  previous = signal.signal(signal.SIGTERM, unhandled)
  try:
    lines = _exit_lines(capsys, lambda: cli.run(mode, given, str(workdir), _flags()),
                        128 + signal.SIGTERM)
  finally:
    assert signal.signal(signal.SIGTERM, previous) is unhandled  # cli.run put it back
  assert lines[-1] == (f"--mode={mode} stopped by SIGTERM; what was saved is kept (nothing "
                       "half-written is): run the same command to continue")
  if mode == "train":  # no cache published half-built
    assert not list((workdir / "features").glob("[0-9a-f]*"))
  else:  # the previous evaluation whole, no staging folder left
    assert _tree(workdir / "eval") == before


def test_a_metrics_row_cut_by_a_kill_is_written_again_on_resume(shapes_config, tmp_path,
                                                                  monkeypatch):
  config = ml_collections.ConfigDict(shapes_config.to_dict())
  config.stages = ("features", "head")
  config.head.epochs, config.head.hidden = 2, (16,)
  workdir = tmp_path / "w"
  real, rows = workdir_lib.append_metrics, []

  def killed_in_epoch_2(directory, row):
    rows.append(dict(row))
    if row["epoch"] == 2:  # a kill mid-write: half the line, then nothing more
      with workdir_lib.metrics_path(directory).open("a") as f:
        f.write(json.dumps(row)[:30])
      raise KeyboardInterrupt
    real(directory, row)
  monkeypatch.setattr(workdir_lib, "append_metrics", killed_in_epoch_2)
  with pytest.raises(KeyboardInterrupt):
    runner.train_and_evaluate(config, str(workdir))
  monkeypatch.setattr(workdir_lib, "append_metrics", real)
  runner.train_and_evaluate(config, str(workdir))
  got = workdir_lib.read_metrics(workdir)
  timing = ("seconds", "images_per_second")
  assert [{k: v for k, v in r.items() if k not in timing} for r in got] == \
      [{k: v for k, v in r.items() if k not in timing} for r in rows]  # epoch 2: the same numbers
  assert [r["epoch"] for r in got] == [1, 2]


def test_predict_says_which_checkpoint_answers_while_a_later_stage_runs(
    shapes_config, tmp_path_factory, tmp_path, capsys):
  trained, config = trained_workdir(shapes_config, tmp_path_factory)
  workdir = _copy(trained, tmp_path / "w")
  paths, _ = split_files(config, "test", tmp_path / "images", limit=2)
  _edit_config(workdir, stages=["features", "head", "finetune", "evaluate"])  # finetune to come
  predict.predict_cli(str(workdir), str(tmp_path / "images"), top_k=1)
  step = checkpoints.Manager(workdir, "head", read_only=True).best_step()
  assert (f"predicting with checkpoint head/{step} (best) of {workdir}; the finetune stage has no "
          "checkpoint yet: this is the head stage's model") in capsys.readouterr().err
  (workdir / "checkpoints" / "head" / "DONE").unlink()  # the head stage still training
  predict.predict_cli(str(workdir), str(tmp_path / "images"), top_k=1)
  assert (f"predicting with checkpoint head/{step} (best) of {workdir}; the head stage has not "
          "finished: this checkpoint is from within its training") in capsys.readouterr().err




# A coroutine suspended mid-read, then dropped: its close() raises (as Orbax's
# _read_array_index_and_device_put re-raises BaseException), which Python reports through
# sys.unraisablehook ('Exception ignored in: <coroutine ...>').
ABANDON = """
import sys
from mlc_jax import checkpoints
SOURCE = (
    "class _Pending:\\n"
    "  def __await__(self):\\n"
    "    yield\\n"
    "async def read():\\n"
    "  try:\\n"
    "    await _Pending()\\n"
    "  except BaseException as e:\\n"
    "    raise Exception('Encountered error while reading array index') from e\\n")
def abandon(filename):
  namespace = {}
  exec(compile(SOURCE, filename, "exec"), namespace)
  coroutine = namespace["read"]()
  coroutine.send(None)
  del coroutine
checkpoints.Manager(sys.argv[1], "head")  # installs the hooks, as every restore does
abandon("/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
print("MINE", file=sys.stderr, flush=True)
abandon("/elsewhere/mine.py")  # anyone else's is still reported
"""


def test_orbax_coroutines_abandoned_after_a_refused_restore_print_nothing(tmp_path):
  # How a refused restore floods (timing-dependent there: 27 tracebacks in one run, none in the
  # next three): each read still pending when the error was raised is collected later.
  proc = _launch(str(tmp_path), script=ABANDON)
  assert proc.returncode == 0, proc.stderr[-3000:]
  orbax, mine = proc.stderr.split("MINE\n")
  assert "Exception ignored" not in orbax and "Traceback" not in orbax, orbax
  assert "Exception ignored in: <coroutine object read" in mine
