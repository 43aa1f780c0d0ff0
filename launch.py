"""Entry point: wires absl flags to the library. Intentionally short; the logic lives in mlc_jax.

  python launch.py --config=configs/demo.py --workdir=runs/demo [--mode=train] [--config.key=value ...]
"""
from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config, logs, checkpoints, features, reports.")
flags.DEFINE_enum("mode", "train",
                  ["train", "evaluate", "baseline", "predict", "export", "data_report"],
                  "What to do with the config and workdir.")
flags.DEFINE_string("split", "test", "evaluate/baseline: the split to score.")
flags.DEFINE_string("predictions", None, "evaluate: score this predictions file (CSV or JSON lines).")
flags.DEFINE_string("images", None, "predict: an image path, folder or glob.")
flags.DEFINE_integer("top_k", 3, "predict: labels printed per image.")
flags.DEFINE_string("output", None, "predict: CSV/JSON-lines file to write; export: directory.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "evaluate/predict/export: which checkpoint.")
flags.mark_flags_as_required(["workdir"])

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from mlc_jax import cli  # imported here so --help stays fast
  cli.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS)


if __name__ == "__main__":
  app.run(main)
