"""Maps launch.py's --mode onto library functions; turns UserError into one clear line."""
import sys

from absl import logging

from mlc_jax.errors import UserError


def _need_config(config, mode):
  if config is None:
    raise UserError(f"--mode={mode} needs --config=configs/NAME.py")
  return config


def _dispatch(mode, config, workdir, flags):
  if mode == "train":
    from mlc_jax import train
    return train.train_and_evaluate(_need_config(config, mode), workdir)
  if mode == "evaluate":
    from mlc_jax import evaluate
    return evaluate.evaluate(workdir, split=flags.split, which=flags.which,
                             predictions=flags.predictions, config=config)
  if mode == "baseline":
    from mlc_jax import evaluate
    return evaluate.baseline(_need_config(config, mode), workdir, split=flags.split)
  if mode == "predict":
    from mlc_jax import predict
    if not flags.images:
      raise UserError("--mode=predict needs --images=PATH_OR_GLOB")
    return predict.predict_cli(workdir, flags.images, top_k=flags.top_k,
                                  output=flags.output, which=flags.which)
  if mode == "export":
    from mlc_jax import export
    if not flags.output:
      raise UserError("--mode=export needs --output=DIR")
    return export.export(workdir, flags.output, which=flags.which)
  if mode == "data_report":
    from mlc_jax.data import report
    return report.data_report(_need_config(config, mode), workdir)
  raise UserError(f"unknown --mode={mode!r}")


def run(mode, config, workdir, flags):
  """Runs one mode; a UserError becomes a single message on stderr and exit status 1."""
  try:
    return _dispatch(mode, config, workdir, flags)
  except UserError as e:
    logging.flush()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
