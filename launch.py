"""Entry point: wires absl flags to the library. Intentionally short; the logic lives in mlc_jax.

  python launch.py --config=configs/demo.py --workdir=runs/demo [--mode=train] [--config.key=value ...]
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config, logs, checkpoints, features, reports.")
flags.DEFINE_enum("mode", "train",
                  ["train", "evaluate", "baseline", "predict", "export", "data_report", "sweep"],
                  "What to do with the config and workdir.")
flags.DEFINE_bool("accept_config_change", False,
                  "train: continue a workdir whose config.json differs from --config in keys that "
                  "change what is trained; the change is recorded in config_changes.jsonl.")
flags.DEFINE_string("split", "test", "evaluate/baseline: the split to score.")
flags.DEFINE_string("predictions", None, "evaluate: score this predictions file (CSV or JSON lines).")
flags.DEFINE_string("images", None, "predict: an image path, folder or glob.")
flags.DEFINE_integer("top_k", 3, "predict: labels printed per image.")
flags.DEFINE_string("output", None, "predict: CSV/JSON-lines file to write; export: directory "
                    "(--format=keras_h5: a .h5 file).")
flags.DEFINE_enum("format", "stablehlo", ["stablehlo", "onnx", "keras_h5"],
                  "export: a StableHLO function with serve.py (default; runs with jax), an ONNX "
                  "graph with serve.py (runs with onnxruntime), or the VGG's weights as a Keras "
                  "HDF5 file that model.weights=FILE (and Keras's load_weights) reads.")
flags.DEFINE_integer("sweep_workers", 1, "sweep: worker processes on this machine (each its own "
                     "GPU where there are several, its own share of the CPU cores otherwise).",
                     lower_bound=1)
flags.DEFINE_enum("which", "best", ["best", "latest"], "evaluate/predict/export: which checkpoint.")
flags.DEFINE_enum("stage", None, ["head", "finetune"],
                  "evaluate/predict/export: the stage's checkpoint (default: the last trained).")
flags.mark_flags_as_required(["workdir"])

FLAGS = flags.FLAGS


def parse_flags(argv):
  """absl parsing, with a mistyped --config.KEY answered in one line naming the nearest keys."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    from mlc_jax import config as config_lib
    key = next((a.split("=")[0][len("--config."):] for a in argv[1:]
                if a.startswith("--config.") and config_lib.get(
                    config_lib.get_config(), a.split("=")[0][len("--config."):]) is None), None)
    text = config_lib.unknown_key_message(key, config_lib.flatten(config_lib.get_config())) \
        if key else f"bad --config override ({e})"
    print(f"error: {text}", file=sys.stderr)
    sys.exit(1)
  except flags.Error as e:
    print(f"error: {e}\nPass --help for the flags.", file=sys.stderr)
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from mlc_jax import cli  # imported here so --help stays fast
  overrides = config_flags.get_override_values(FLAGS["config"]) if FLAGS.config else {}
  cli.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS, overrides)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
