"""One tiny trained run per test session, shared by the inference tests (predict, export).

It trains in a subprocess on 4 (forced) host devices with the demo's eval_batch_size=250 (not a
multiple of 4: padded and masked), so every test that restores it also checks that a run trained
on several devices loads on this process's single CPU device, and tests/test_parallel.py checks
its 4-device evaluation against a 1-device one.
"""
import fcntl
import json
import os
import pathlib
import subprocess
import sys

from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
_RUNS = {}

TRAIN = """
import json, sys
import ml_collections
from mlc_jax import runner
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
runner.train_and_evaluate(config, sys.argv[2])
"""


def run_config(shapes_config):
  """The demo config's model (VGG16 with batch norm) on the tiny shapes set, a few steps.

  Fine-tuning is left out: compiling its backward pass would double the run's time, and
  restoring reads whichever stage comes last the same way.
  """
  import ml_collections
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.stages = ("features", "head", "evaluate")
  c.model.batch_norm = True
  c.head.epochs = 1
  c.head.learning_rate = 1e-3
  c.eval_batch_size = 250  # the demo's
  return c


def trained_workdir(shapes_config, tmp_path_factory):
  """Trains (once per session, also across pytest-xdist workers) -> (workdir, config)."""
  if "run" not in _RUNS:
    config = run_config(shapes_config)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
      root = root.parent  # the workers' temporary folders are siblings: share one run
    workdir, done = root / "trained_run", root / "trained_run.done"
    with open(root / "trained_run.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits for the one training
      if not done.exists():
        env = subprocess_env("--xla_force_host_platform_device_count=4")
        proc = subprocess.run([sys.executable, "-c", TRAIN, config.to_json(), str(workdir)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        done.touch()
    _RUNS["run"] = (workdir, config)
  return _RUNS["run"]


def split_files(config, split, directory, limit=None):
  """Writes the split's encoded images (stored order) under directory by their dataset file names.

  Returns (paths, names). The bytes are the dataset's own: decoding them is decoding evaluation's.
  """
  import tensorflow_datasets as tfds

  from mlc_jax.data import registry
  source = registry.get(config)
  ds = source.builder.as_dataset(split=source.splits[split], shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
  paths, names = [], []
  for example in ds.take(limit or -1).as_numpy_iterator():
    name = example["image/filename"].decode()
    path = pathlib.Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(example["image"])
    paths.append(str(path))
    names.append(name)
  return paths, names


def read_json(path):
  """JSON file -> object."""
  return json.loads(pathlib.Path(path).read_text())
