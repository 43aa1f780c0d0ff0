"""The package's layout holds: rooms import only the rooms below them, modules form no import
cycle, files stay small.

Read from the source with ast, so a lazy import inside a function counts as much as one at the top.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mlc_jax"
# room -> rooms of mlc_jax it must never import
FORBIDDEN = {
    "files": ("config", "workdir", "parallel", "checkpoints", "restore", "runner", "cli", "models",
              "data", "train", "eval", "inference", "metrics", "sweep"),
    "ops": ("config", "workdir", "parallel", "checkpoints", "restore", "runner", "cli", "models",
            "data", "train", "eval", "inference", "metrics", "sweep", "files"),
    "config": ("workdir", "parallel", "checkpoints", "runner", "cli", "models", "data", "train",
               "eval", "inference", "metrics", "sweep"),
    "metrics": ("config", "workdir", "parallel", "checkpoints", "runner", "cli", "models", "data",
                "train", "eval", "inference"),
    "models": ("config", "workdir", "checkpoints", "runner", "cli", "data", "train", "eval", "inference"),
    "data": ("workdir", "checkpoints", "runner", "cli", "models", "train", "eval", "inference"),
    "train": ("runner", "cli", "eval", "inference"),
    "eval": ("runner", "cli", "train", "inference"),
    "inference": ("runner", "cli", "train", "eval"),
    "restore": ("runner", "cli", "train", "eval", "inference", "data"),
    "checkpoints": ("restore", "runner", "cli", "train", "eval", "inference", "data"),
    "parallel": ("runner", "cli", "train", "eval", "inference", "data", "models", "checkpoints"),
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


def _module_name(path):
  rel = path.relative_to(PACKAGE.parent).with_suffix("")
  parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
  return ".".join(parts)


def _imported_modules(path, known):
  """The mlc_jax modules a file imports: `from P import M` imports module P.M where M is one,
  else P (a name defined in P)."""
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
               for a in node.names]
    for name in names:
      while name and name not in known:
        name = name.rpartition(".")[0]
      if name:
        yield name


def _import_graph():
  """{module: set of mlc_jax modules it imports}, imports inside functions included."""
  paths = {_module_name(p): p for p in _modules()}
  return {name: {t for t in _imported_modules(path, paths) if t not in (name, "mlc_jax")}
          for name, path in paths.items()}


def test_modules_form_no_import_cycle():
  graph, cycles = _import_graph(), []
  done, stack = set(), []

  def visit(node):
    if node in stack:
      cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
      return
    if node in done:
      return
    stack.append(node)
    for target in sorted(graph[node]):
      visit(target)
    stack.pop()
    done.add(node)

  for node in sorted(graph):
    visit(node)
  assert not cycles, cycles


def test_files_are_rooms_of_one_job():
  too_long = {str(p.relative_to(PACKAGE)): n for p in _modules()
              if (n := len(p.read_text().splitlines())) > 400}
  assert not too_long
  top = [p.name for p in PACKAGE.glob("*.py")]
  assert len(top) <= 8, top


def test_importing_the_package_changes_nothing_in_the_process():
  """XLA_FLAGS and TensorFlow's devices are the entry point's to set (parallel.setup_process)."""
  import subprocess
  import sys
  code = ("import os, tensorflow as tf\n"
          "calls = []\n"
          "tf.config.set_visible_devices = lambda *a: calls.append(a)\n"
          "before = os.environ.get('XLA_FLAGS')\n"
          "import mlc_jax, mlc_jax.data.pipeline, mlc_jax.runner, mlc_jax.inference.classifier\n"
          "assert os.environ.get('XLA_FLAGS') == before, os.environ.get('XLA_FLAGS')\n"
          "assert not calls, calls\n"
          "from mlc_jax import parallel\n"
          "parallel.setup_process()\n"
          "assert parallel.XLA_CPU_FLAGS in os.environ['XLA_FLAGS'] and calls == [([], 'GPU')]\n")
  env = {k: v for k, v in __import__("os").environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
