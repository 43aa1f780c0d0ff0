"""Shared test set-up: the repo root on sys.path (for `configs`), small configs."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


def default_config():
  """configs/default.py's config, unlocked so a test can change it."""
  from configs import default
  return default.get_config()
