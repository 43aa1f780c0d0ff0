"""Shared test set-up: the repo root on sys.path (for `configs`), small configs, a tiny shapes set.

Every test process (and the subprocesses tests start, which inherit the environment) shares one
persistent XLA compilation cache for the session: the tiny models compile once, not once per
process (a compile costs seconds on 2 cores; a cache hit a fraction of one). And all of them
compile with XLA:CPU's quickest setting (optimisation level 0): the suite's time goes to compiling
tiny models, not to running them, and that halves it. The numbers are the same up to rounding;
`make demo` and the benchmarks run XLA's default optimisation.
"""
import os
import pathlib
import sys
import tempfile

import pytest

QUICK_COMPILE = "--xla_backend_optimization_level=0"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before anything imports jax
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mlc_jax_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
if QUICK_COMPILE not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_COMPILE}".strip()

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from mlc_jax import parallel  # noqa: E402

parallel.setup_process(tensorflow=False)  # the test process is an entry point: XLA's CPU flags (CPU only)


def subprocess_env(xla_flags="", **extra):
  """The environment for a test's subprocess run: this one's (the compile cache and flags, no
  distributed settings), on the CPU, without Keras, with xla_flags added and `extra` set."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
  env.update({"JAX_PLATFORMS": "cpu",
              "XLA_FLAGS": f"{QUICK_COMPILE} {parallel.XLA_CPU_FLAGS} {xla_flags}".strip(),
              **extra})
  # Keras hidden: TensorFlow's import would load it for nothing (tests/without_keras/keras)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(ROOT / "tests" / "without_keras")] + [p for p in [env.get("PYTHONPATH", "")] if p])
  return env


def one_error_line(capsys, call):
  """Runs call, which must end the process with one `error:` line and exit status 1; the line."""
  with pytest.raises(SystemExit) as e:
    call()
  err = capsys.readouterr().err
  assert e.value.code == 1 and "Traceback" not in err, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def default_config():
  """configs/default.py's config, unlocked so a test can change it."""
  from configs import default
  return default.get_config()


def tiny_shapes_config(data_dir, *, train=96, val=32, test=32, image_size=32):
  """A config for a tiny generated shapes set in data_dir (width 1/16, no weights, small batches)."""
  c = default_config()
  c.dataset = "shapes"
  c.data.data_dir = str(data_dir)
  c.data.shapes_image_size = image_size
  c.data.shapes_train, c.data.shapes_val, c.data.shapes_test = train, val, test
  c.image_size = image_size
  c.batch_size = 16
  c.eval_batch_size = 16
  c.head.batch_size = 16
  c.model.width = 1 / 16
  c.model.weights = ""
  return c


# The files that start training subprocesses, longest first: with pytest-xdist they start first,
# so the two workers finish together instead of one waiting on the last long file.
LONG_FILES = ("test_parallel.py", "test_sweep.py", "test_runner.py", "test_backbones.py",
              "test_inference_onnx.py", "test_models_sdist_weights.py", "test_models_resnet.py",
              "test_models_efficientnet_lite.py", "test_inference_predict.py", "test_disk_faults.py",
              "test_data_mixture.py", "test_floods.py", "test_gpu_dry_run.py", "test_models_weights.py",
              "test_bf16.py")


def pytest_collection_modifyitems(items):
  """Runs LONG_FILES first (in that order), the rest as collected."""
  rank = {name: i for i, name in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(pathlib.Path(str(item.fspath)).name, len(rank)))


@pytest.fixture(scope="session")
def shapes_config(tmp_path_factory):
  """Config with dataset='shapes': 96/32/32 images of 32 px, generated once per session."""
  from mlc_jax.data import registry
  config = tiny_shapes_config(tmp_path_factory.mktemp("shapes_data"))
  registry.get(config)  # generate now, so tests that use it time only their own work
  return config


_APPLY = {}


def forward(model, images):
  """The model under jax.jit through nnx.split/merge, as training and prediction run it."""
  import jax
  import numpy as np
  from flax import nnx
  if "apply" not in _APPLY:
    _APPLY["apply"] = jax.jit(lambda graphdef, state, x: nnx.merge(graphdef, state)(x),
                              static_argnums=0)
  graphdef, state = nnx.split(model)
  return np.asarray(_APPLY["apply"](graphdef, state, images))
