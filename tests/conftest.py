"""Shared test set-up: the repo root on sys.path (for `configs`), small configs, a tiny shapes set.

Every test process (and the subprocesses tests start, which inherit the environment) shares one
persistent XLA compilation cache for the session: the tiny models compile once, not once per
process (a compile costs seconds on 2 cores; a cache hit a fraction of one).
"""
import os
import pathlib
import sys
import tempfile

import pytest

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before anything imports jax
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mlc_jax_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


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


@pytest.fixture(scope="session")
def shapes_config(tmp_path_factory):
  """Config with dataset='shapes': 96/32/32 images of 32 px, generated once per session."""
  from mlc_jax.data import registry
  config = tiny_shapes_config(tmp_path_factory.mktemp("shapes_data"))
  registry.get(config)  # generate now, so tests that use it time only their own work
  return config
