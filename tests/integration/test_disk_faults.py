"""A full or read-only disk is one line: what could not be written, where, and that saved work is
intact; after space is freed the run resumes to the numbers of a run that never stopped."""
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import types

import ml_collections
import numpy as np

import mlc_jax
from conftest import ROOT, one_error_line, subprocess_env
from mlc_jax import cli, runner
from trained_run import trained_workdir

# Trains config argv[1] in workdir argv[2] through the CLI; with argv[3] == "fill", the disk is
# filled (a file grown until ENOSPC) when the second epoch's row is logged (a row is logged before
# its epoch's checkpoint is saved), once step 6 is committed: the second epoch's checkpoint cannot
# be written by Orbax's background writer.
TRAIN = """
import json, logging, sys, types
logging.basicConfig(level=logging.INFO)  # absl's INFO lines (the resume) on stderr
import ml_collections
from mlc_jax import cli
from mlc_jax.train import loop
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
log = loop._log_epoch
def log_then_fill(run, row):
  log(run, row)
  if sys.argv[3] == "fill" and row["epoch"] == 2:
    import os, time
    for _ in range(600):  # once step 6 is committed by the background writer
      if os.path.isdir(sys.argv[2] + "/checkpoints/head/6"):
        break
      time.sleep(0.05)
    with open(sys.argv[2] + "/../filler", "wb", buffering=0) as f:  # nothing left to flush
      try:
        while True:
          f.write(b"x" * 65536)
          f.flush()
      except OSError:
        pass
loop._log_epoch = log_then_fill
cli.run("train", config, sys.argv[2], types.SimpleNamespace(accept_config_change=False))
"""


def _config(shapes_config):
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.stages = ("features", "head")
  c.head.epochs, c.head.hidden = 2, (16,)
  return c


def test_a_disk_that_fills_at_a_checkpoint_is_one_line_and_the_rerun_resumes(shapes_config,
                                                                              tmp_path):
  config = _config(shapes_config)
  mnt, out = tmp_path / "mnt", tmp_path / "out"
  mnt.mkdir()
  out.mkdir()
  args = [sys.executable, TRAIN, config.to_json()]
  # a private mount namespace: the tmpfs goes away with the shell, whatever happens
  script = (f'mount -t tmpfs -o size=8m tmpfs "$1" && cd "{ROOT}" && '
            f'"$2" -c "$3" "$4" "$1/run" fill 2> "$5/err1"; echo $? > "$5/rc1"; '
            f'rm "$1/filler"; "$2" -c "$3" "$4" "$1/run" no 2> "$5/err2"; echo $? > "$5/rc2"; '
            f'cp -r "$1/run" "$5/run"')
  proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(mnt), *args, str(out)],
                        env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  err = (out / "err1").read_text()
  assert (out / "rc1").read_text().strip() == "1", err[-3000:]
  assert "Traceback" not in err and "Event loop" not in err, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith(("E", "error"))]  # absl E lines too
  assert len(errors) == 1, err[-3000:]  # the save's own call, or the wait for it, reports it
  assert re.fullmatch(re.escape("error: could not write a checkpoint") +
                      r"( \(step 12 or the one before\))?" + re.escape(
                          f" in {mnt}/run/checkpoints/head: no space left on the device; the steps "
                          "saved before (6) are intact; free some space there and run the same "
                          "command to continue"), errors[0]), errors[0]
  assert (out / "rc2").read_text().strip() == "0", (out / "err2").read_text()[-3000:]
  assert "head: resuming from step 6" in (out / "err2").read_text()
  reference = tmp_path / "reference"  # the same run on a disk that never filled
  runner.train_and_evaluate(config, str(reference))
  got, want = mlc_jax.load(out / "run", which="latest"), mlc_jax.load(reference, which="latest")
  assert got.checkpoint == want.checkpoint == "head/12"
  for name, value in want.params.items():
    np.testing.assert_array_equal(got.params[name], value, err_msg=name)


def _flags(**kw):
  return types.SimpleNamespace(**{**dict(accept_config_change=False, split="test", which="best",
                                         stage=None, predictions=None), **kw})


def _refuse(monkeypatch, module, name, number, when=lambda *a, **k: True):
  real = getattr(module, name)

  def refused(*args, **kwargs):
    if when(*args, **kwargs):
      raise OSError(number, os.strerror(number), str(args[0]) if args else None)
    return real(*args, **kwargs)
  monkeypatch.setattr(module, name, refused)


def _tree(directory):
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_read_only_workdir_is_one_line_from_the_lock(shapes_config, tmp_path, capsys,
                                                       monkeypatch):
  workdir = tmp_path / "w"
  workdir.mkdir()
  _refuse(monkeypatch, os, "open", errno.EROFS, lambda p, *a, **k: str(p).endswith(".lock"))
  line = one_error_line(capsys, lambda: cli.run("train", _config(shapes_config), str(workdir),
                                                 _flags()))
  assert line == (f"error: could not write the lock file .lock in {workdir}: the file system is "
                  "read-only; nothing in the workdir was changed; make it writable (or pass "
                  "another --workdir/--output) and run the same command again")
  assert list(workdir.iterdir()) == []


def test_a_full_disk_during_evaluate_is_one_line_and_the_last_evaluation_stays(
    shapes_config, tmp_path_factory, tmp_path, capsys, monkeypatch):
  trained, _ = trained_workdir(shapes_config, tmp_path_factory)
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns(".lock"))
  before = _tree(workdir / "eval")
  (workdir / "eval" / "test" / "metrics.json").write_text(
      json.dumps({**json.loads((workdir / "eval/test/metrics.json").read_text()),
                  "meta": {}}))  # not current: evaluate runs again
  before = _tree(workdir / "eval")
  _refuse(monkeypatch, np, "savez_compressed", errno.ENOSPC)
  line = one_error_line(capsys, lambda: cli.run("evaluate", None, str(workdir), _flags()))
  assert line == (f"error: could not write the outputs in {workdir}/eval/test: no space left on "
                  "the device; the previous ones there are intact; free some space there and run "
                  "the same command to continue")
  assert _tree(workdir / "eval") == before
