"""Maps launch.py's --mode onto library functions; a user's error becomes one clear line.

UserError -> `error: ...` on stderr, exit 1 (so is a write the disk refused, full or read-only,
wherever it happens: mlc_jax.files.disk); errors.Stopped (SIGTERM, Ctrl-C after a checkpoint
was saved) -> its one line, exit 128 + the signal; Ctrl-C or SIGTERM elsewhere (building the
feature cache, evaluating: nothing half-written is kept there) -> one line, exit 128 + the signal.
"""
import os
import signal
import sys
import threading

from absl import logging

from mlc_jax import parallel, workdir as workdir_lib
from mlc_jax.files import disk
from mlc_jax.errors import Stopped, UserError


DATA_MODES = ("train", "evaluate", "baseline", "sweep", "data_report")  # modes that run tf.data


def _need_config(config, mode):
  if config is None:
    raise UserError(f"--mode={mode} needs --config=configs/NAME.py")
  return config


def _dispatch(mode, config, workdir, flags, overrides):
  if workdir and os.path.exists(os.path.expanduser(str(workdir))) and not os.path.isdir(
      os.path.expanduser(str(workdir))):
    raise UserError(f"--workdir={workdir} is a file, not a folder; pass the folder of a run "
                    "(or a new one)")
  if mode == "train":
    if config is not None and not parallel.wants_distributed(config):
      workdir_lib.check_unlocked(workdir)  # a busy workdir answers before the imports below
    from mlc_jax import runner
    return runner.train_and_evaluate(_need_config(config, mode), workdir,
                                     accept_config_change=flags.accept_config_change)
  if mode == "evaluate":
    from mlc_jax.eval import evaluate
    return evaluate.evaluate(workdir, split=flags.split, which=flags.which, stage=flags.stage,
                             predictions=flags.predictions, given=config, explicit=overrides)
  if mode == "baseline":
    from mlc_jax.eval import baselines
    return baselines.baseline(_need_config(config, mode), workdir, split=flags.split)
  if mode == "predict":
    from mlc_jax.inference import predict
    if not flags.images:
      raise UserError("--mode=predict needs --images=PATH_OR_GLOB")
    return predict.predict_cli(workdir, flags.images, top_k=flags.top_k, output=flags.output,
                               which=flags.which, stage=flags.stage)
  if mode == "export":
    from mlc_jax.inference import export
    fmt = getattr(flags, "format", "stablehlo")
    if not flags.output:
      raise UserError("--mode=export --format=keras_h5 needs --output=FILE.h5" if fmt == "keras_h5"
                      else "--mode=export needs --output=DIR")
    if fmt == "keras_h5":
      return export.export_keras_h5(workdir, flags.output, which=flags.which, stage=flags.stage)
    from mlc_jax.inference import classifier
    return classifier.export_run(workdir, flags.output, which=flags.which, stage=flags.stage,
                                 fmt=fmt)
  if mode == "sweep":
    from mlc_jax import sweep
    path = "CONFIG"
    if hasattr(flags, "__getitem__"):  # absl's FLAGS: the --config file, for the best command
      from ml_collections import config_flags
      path = config_flags.get_config_filename(flags["config"])
    return sweep.run(_need_config(config, mode), workdir, config_path=path,
                     overrides=dict(overrides or {}),
                     workers=int(getattr(flags, "sweep_workers", 1) or 1))
  if mode == "data_report":
    from mlc_jax.data import report
    return report.data_report(_need_config(config, mode), workdir)
  raise UserError(f"unknown --mode={mode!r}")


def _stop_on_sigterm(mode):
  """While a mode runs, SIGTERM raises errors.Stopped (one line) instead of killing the process
  silently; a training loop installs its own handler, which saves a checkpoint first."""
  def handler(signum, frame):
    del frame
    raise Stopped(f"--mode={mode} stopped by SIGTERM; what was saved is kept (nothing half-written "
                  "is): run the same command to continue", signum)
  if threading.current_thread() is threading.main_thread():
    return signal.signal(signal.SIGTERM, handler)
  return None


def run(mode, config, workdir, flags, overrides=None):
  """Runs one mode; see the module doc for how it ends on an error.

  Modules are imported per mode, measured on 2 cores: the training runner (TensorFlow, TFDS,
  Orbax) takes ~12 s to import, the export path ~3 s, so --mode=export does not pay for the rest.
  """
  previous = _stop_on_sigterm(mode)
  try:
    parallel.setup_process(tensorflow=mode in DATA_MODES)
    return _dispatch(mode, config, workdir, flags, overrides or {})
  except UserError as e:
    logging.flush()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except Stopped as e:
    logging.flush()
    print(str(e), file=sys.stderr)
    sys.exit(128 + int(e.signum or 0))
  except KeyboardInterrupt:
    logging.flush()
    print("interrupted (Ctrl-C); what was saved is kept: run the same command to continue",
          file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
  except Exception as e:  # noqa: BLE001 - a disk refusal no guard named: still one line
    number = disk.code(e)
    if number is None:
      raise
    logging.flush()
    where = getattr(e, "filename", None) or workdir
    print(f"error: {disk.message('a file', where, 'what was saved before is intact', number)}",
          file=sys.stderr)
    sys.exit(1)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
