"""The package's layout holds: rooms import only the rooms below them (DESIGN.md), files stay small.

Read from the source with ast, so a lazy import inside a function counts as much as one at the top.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mlc_jax"
# room -> rooms of mlc_jax it must never import
FORBIDDEN = {
    "metrics": ("config", "workdir", "parallel", "checkpoints", "runner", "cli", "models", "data",
                "train", "eval", "inference"),
    "models": ("workdir", "checkpoints", "runner", "cli", "data", "train", "eval", "inference"),
    "data": ("workdir", "checkpoints", "runner", "cli", "models", "train", "eval", "inference"),
    "train": ("runner", "cli", "eval", "inference"),
    "eval": ("runner", "cli", "train", "inference"),
    "inference": ("runner", "cli", "train", "eval"),
    "checkpoints": ("runner", "cli", "train", "eval", "inference", "data"),
    "parallel": ("runner", "cli", "train", "eval", "inference", "data", "models", "checkpoints"),
    "files": ("config", "workdir", "parallel", "checkpoints", "runner", "cli", "models", "data",
              "train", "eval", "inference", "metrics", "sweep"),
}


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py") if "resources" not in p.parts)


def _room(path):
  rel = path.relative_to(PACKAGE)
  return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      if node.module == "mlc_jax":  # `from mlc_jax import models` imports mlc_jax.models
        yield from (f"mlc_jax.{a.name}" for a in node.names)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_rooms_import_only_what_lies_below_them(path):
  room = _room(path)
  for name in _imports(path):
    assert name != "configs" and not name.startswith("configs."), f"{path} imports {name}"
    if not name.startswith("mlc_jax."):
      continue
    target = name.split(".")[1]
    assert target not in FORBIDDEN.get(room, ()), f"{room}: {path.name} imports {name}"


def test_files_are_rooms_of_one_job():
  too_long = {str(p.relative_to(PACKAGE)): n for p in _modules()
              if (n := len(p.read_text().splitlines())) > 400}
  assert not too_long
  top = [p.name for p in PACKAGE.glob("*.py")]
  assert len(top) <= 8, top
