"""The workdir contract: what a run directory holds, who may write it, and how a relaunch may differ.

  config.json            the run's config, written once (paths absolute); a relaunch whose config
                         differs in a key that changes what is trained is refused (FREE_KEYS may
                         differ); --accept_config_change records an accepted change in
  config_changes.jsonl   one JSON object per accepted change: time, {key: [old, new]}, stages done
  labels.txt             the class names, in output order
  metrics.jsonl          one JSON object per epoch; rewritten atomically, a truncated last line dropped
  checkpoints/STAGE/     Orbax steps, DONE when the stage finished, thresholds.json: per-class
                         thresholds keyed by the step they were tuned for
  eval/SPLIT/            metrics.json, scores.npz, report.md, plots: published all together
  features/KEY/          the bottleneck cache
  tensorboard/
  .lock                  held (flock) by the process writing the workdir: its pid and host inside
Every file is written to a temporary name and renamed, so a kill leaves the old file or the new one.
config.json, labels.txt, thresholds.json carry a digest record (mlc_jax.files): see read_*.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
import tempfile

import jax
import ml_collections
import numpy as np
from absl import logging

from mlc_jax import config as config_lib
from mlc_jax.files import checked, disk
from mlc_jax.errors import UserError

def path(workdir, *parts):
  """WORKDIR/parts..., absolute."""
  return pathlib.Path(workdir).expanduser().resolve().joinpath(*parts)


def checkpoint_dir(workdir, stage):
  """WORKDIR/checkpoints/STAGE."""
  return path(workdir, "checkpoints", stage)


def eval_dir(workdir, split):
  """WORKDIR/eval/SPLIT."""
  return path(workdir, "eval", split)


def is_chief():
  """Process 0 writes the workdir's files; the others only take part in collectives."""
  return jax.process_index() == 0


def write_text(target, text):
  """Writes target atomically (temporary file beside it, then rename; files.checked.write_atomic)."""
  checked.write_atomic(target, text.encode())


# -- config.json ---------------------------------------------------------------------------------

def read_config(workdir):
  """WORKDIR/config.json -> ConfigDict (UserError when missing)."""
  p = path(workdir, "config.json")
  if not p.exists():
    raise UserError(f"{p} not found: {workdir} is not a training workdir "
                    "(run --mode=train first, or pass the right --workdir)")
  what = "it records what was trained here and cannot be rebuilt"
  way_out = (f"restore it from a backup or train in a new --workdir (if you edited it on purpose, "
             f"delete {checked.record_path(p)} to accept it)")
  text = checked.read_text(p, what, way_out)
  try:
    return ml_collections.ConfigDict(json.loads(text))
  except (ValueError, TypeError) as e:
    raise UserError(f"{p}: it is not a JSON config ({e}); {what}: {way_out}") from None


def read_labels(workdir):
  """WORKDIR/labels.txt -> list of label names."""
  p = path(workdir, "labels.txt")
  if not p.exists():
    raise UserError(f"{p} not found: the workdir is incomplete; rerun --mode=train")
  return checked.read_text(p, "it names the checkpoints' outputs in order and cannot be rebuilt",
                           f"restore the file as training wrote it (if you edited it on purpose, "
                           f"delete {checked.record_path(p)} to accept it)").splitlines()


def _plain(config):
  """config -> {flat key: JSON value} (tuples become lists, as config.json stores them); head.hidden
  as its list of sizes, so an older config's 1024 equals (1024,)."""
  flat = config_lib.flatten(json.loads(config.to_json()))
  if "head.hidden" in flat:
    try:
      flat["head.hidden"] = list(config_lib.hidden_sizes(flat["head.hidden"]))
    except UserError:
      pass  # validate names a bad value; here it is compared as written
  return flat


def config_changes(saved, new):
  """{key: (old, new)} of the keys whose values differ and are not free (config.keys).

  A key the saved config lacks (written by an older version) counts as holding its default.
  """
  old, now = _plain(saved), _plain(new)
  defaults = _plain(config_lib.get_config())
  changes = {}
  for key in sorted(set(old) | set(now)):
    if config_lib.is_free(key):
      continue
    before, after = old.get(key, defaults.get(key)), now.get(key, defaults.get(key))
    if before != after:
      changes[key] = (before, after)
  return changes


def _done_stages(workdir):
  return [s for s in config_lib.TRAINED_STAGES if (checkpoint_dir(workdir, s) / "DONE").exists()]


def _has_checkpoint(workdir):
  return any(d.is_dir() and any(p.name.isdigit() for p in d.iterdir())
             for d in (checkpoint_dir(workdir, s) for s in config_lib.TRAINED_STAGES))


def record_config(config, workdir, labels, *, accept_change=False):
  """Writes config.json and labels.txt once; on a relaunch, checks the config against them.

  Returns the config to run under: the new one, with paths resolved. Raises UserError before any
  work when a key that changes what is trained differs (listing old and new values), unless
  accept_change, which records the change in config_changes.jsonl; keys that change the shapes
  in an existing checkpoint, or another label list, are refused even then.
  """
  config = config_lib.resolve_paths(config)
  p, labels_path = path(workdir, "config.json"), path(workdir, "labels.txt")
  if not p.exists():
    if is_chief():
      checked.write_text(labels_path, "\n".join(labels) + "\n")
      checked.write_text(p, config.to_json(indent=2, sort_keys=True))
    return config
  saved_labels = read_labels(workdir)
  if saved_labels != list(labels):
    raise UserError(f"{labels_path} holds {len(saved_labels)} labels but dataset {config.dataset} "
                    f"now has {len(labels)} ({_diff_labels(saved_labels, labels)}); the workdir's "
                    "checkpoints are for the old list: train this dataset in a new --workdir")
  changes = config_changes(read_config(workdir), config)
  if not changes:
    return config
  listing = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
  structural = [k for k in changes if config_lib.is_structural(k)]
  if structural and _has_checkpoint(workdir):
    raise UserError(f"{p} was written for another model: {listing}. The checkpoints in "
                    f"{checkpoint_dir(workdir, '')} have that model's shapes, so these keys cannot "
                    "change in this workdir; train the new model in a new --workdir")
  if not accept_change:
    raise UserError(f"this config differs from {p}, which describes what was trained there: "
                    f"{listing}. Either train in a new --workdir, or pass --accept_config_change to "
                    "continue here under the new values (recorded in config_changes.jsonl; "
                    "finished stages are not retrained)")
  if is_chief():
    record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "changes": {k: list(v) for k, v in changes.items()},
              "stages_done": _done_stages(workdir)}
    with path(workdir, "config_changes.jsonl").open("a") as f:
      f.write(json.dumps(record) + "\n")
    checked.write_text(p, config.to_json(indent=2, sort_keys=True))
  logging.warning("config change accepted and recorded in %s: %s",
                  path(workdir, "config_changes.jsonl"), listing)
  return config


def _show(value):
  return json.dumps(value)


def _diff_labels(old, new):
  gone, added = [x for x in old if x not in new], [x for x in new if x not in old]
  parts = []
  if gone:
    parts.append(f"without {gone[:3]}")
  if added:
    parts.append(f"with {added[:3]}")
  return ", ".join(parts) or "in another order"


# -- the lock ------------------------------------------------------------------------------------

def _take_lock(workdir):
  """An open fd of WORKDIR/.lock holding its flock; UserError naming the holder when it is held."""
  p = path(workdir, ".lock")
  with disk.guard(f"the lock file {p.name}", p.parent, "nothing in the workdir was changed"):
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise UserError(f"workdir {p.parent} is in use by {holder}; wait for that run to end "
                      "or use another --workdir") from None
    logging.warning("cannot lock %s (%s): two runs in this workdir would not be detected", p, e)
  return fd


@contextlib.contextmanager
def wait_lock(path):
  """Holds an flock on the file `path` for the duration, waiting while another process holds it
  (several processes sharing one folder, e.g. a sweep's workers). Released by the kernel if the
  holder dies."""
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def lock(workdir):
  """Holds WORKDIR/.lock for the duration (process 0 only); a second holder fails at once.

  flock is released by the kernel when its holder dies, even by kill -9, so a stale lock never
  blocks a relaunch.
  """
  if not is_chief():
    yield
    return
  fd = _take_lock(workdir)
  try:
    os.ftruncate(fd, 0)
    since = datetime.datetime.now().isoformat(timespec="seconds")
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {since})".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


def check_unlocked(workdir):
  """UserError when a run holds the workdir (a probe: nothing is held afterwards).

  For one-process launches, before the seconds of importing the training code; `lock` is what
  guards the workdir.
  """
  if path(workdir).is_dir():
    os.close(_take_lock(workdir))


# -- metrics.jsonl -------------------------------------------------------------------------------

def metrics_path(workdir):
  """WORKDIR/metrics.jsonl."""
  return path(workdir, "metrics.jsonl")


def read_metrics(workdir):
  """The rows of metrics.jsonl; a truncated last line (a kill mid-write) is dropped with a warning."""
  p = metrics_path(workdir)
  if not p.is_file():
    return []
  lines = p.read_text().splitlines()
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError:
      if number == len(lines):
        logging.warning("%s: dropping its truncated last line %d (%r)", p, number, line[:60])
        break
      raise UserError(f"{p} line {number} is not JSON ({line[:60]!r}); the file was edited by "
                      "hand: restore that line") from None
  return rows


def write_metrics(workdir, rows):
  """Rewrites metrics.jsonl with rows, atomically."""
  write_text(metrics_path(workdir), "".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(workdir, row):
  """Adds one row to metrics.jsonl."""
  p = metrics_path(workdir)
  with p.open("a") as f:
    f.write(json.dumps(row) + "\n")


def truncate_metrics(workdir, stage, after_step):
  """Drops rows this stage will write again (step > after_step) and every later stage's rows."""
  order = config_lib.STAGES
  rows = read_metrics(workdir)
  keep = [r for r in rows
          if order.index(r.get("stage", "head")) < order.index(stage)
          or (r.get("stage") == stage and r.get("step", 0) <= after_step)]
  if metrics_path(workdir).exists():  # also drops a truncated last line before rows are appended
    write_metrics(workdir, keep)


# -- thresholds, one set per checkpoint ----------------------------------------------------------

def thresholds_path(workdir, stage):
  """WORKDIR/checkpoints/STAGE/thresholds.json: {step (or 'STEP-ema'): {labels, thresholds,
  tuned_on}}."""
  return checkpoint_dir(workdir, stage) / "thresholds.json"


def _threshold_key(step, weights):
  return str(int(step)) if weights == "regular" else f"{int(step)}-{weights}"


def _read_threshold_file(p):
  """The thresholds document; {} (with a one-line notice) when damaged: evaluate tunes them again."""
  if not p.is_file():
    return {}
  wrong = checked.problem(p)
  try:
    doc = None if wrong else json.loads(p.read_text())
  except ValueError as e:
    wrong = f"it is not JSON ({e})"
  if isinstance(doc, dict):
    return doc
  logging.warning("%s: %s; ignoring it (0.5 everywhere until --mode=evaluate tunes the thresholds "
                  "again)", p, wrong or "it is not a thresholds document")
  return {}


def write_thresholds(workdir, stage, step, labels, thresholds, tuned_on, weights="regular"):
  """Stores per-class thresholds tuned for the checkpoint (stage, step) and its weights."""
  p = thresholds_path(workdir, stage)
  doc = _read_threshold_file(p)
  doc[_threshold_key(step, weights)] = {"labels": list(labels), "thresholds": [float(t) for t in thresholds],
                         "tuned_on": tuned_on}
  checked.write_text(p, json.dumps(doc, indent=1))
  return p


def read_thresholds(workdir, stage, step, labels, weights="regular"):
  """float32 (C,) thresholds tuned for checkpoint (stage, step) and its weights, or None."""
  p = thresholds_path(workdir, stage)
  entry = _read_threshold_file(p).get(_threshold_key(step, weights))
  if entry is None:
    return None
  if (isinstance(entry, dict) and list(entry.get("labels") or []) == list(labels)
      and len(entry.get("thresholds") or []) == len(labels)):
    return np.asarray(entry["thresholds"], np.float32)
  logging.warning("%s step %s: its thresholds are not for labels.txt's labels; ignoring them (0.5 "
                  "everywhere until --mode=evaluate tunes them again)", p, step)
  return None


# -- evaluation outputs --------------------------------------------------------------------------

@contextlib.contextmanager
def staged(directory):
  """Yields a temporary folder; on success its files replace those of `directory`, else nothing changes.

  The outputs of one evaluation are computed and written there first, so a failure (or a kill)
  before the end leaves the previous evaluation whole.
  """
  directory, tmp = pathlib.Path(directory), None
  try:
    with disk.guard("the outputs", directory, "the previous ones there are intact"):
      directory.mkdir(parents=True, exist_ok=True)
      tmp = pathlib.Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
      yield tmp
      for item in sorted(tmp.iterdir()):
        os.replace(item, directory / item.name)
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
