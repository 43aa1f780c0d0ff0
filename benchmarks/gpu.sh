#!/usr/bin/env bash
# Fine-tune step images/s and MFU on an NVIDIA GPU: VGG16, 224 px, bf16, batch 64/128/256,
# unfreeze_blocks 1 and all (benchmarks/gpu_step.py; the package's own jitted step).
#
#   bash benchmarks/gpu.sh [gpu_step.py flags, e.g. --batches=64,128 --steps=10]
#
# Makes (or reuses) the virtual environment $VENV (default .venv-gpu), installs jax[cuda12] at the
# version pinned in pyproject.toml plus this package, then runs the benchmark under an 8-minute cap.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-gpu}"
PYTHON="${PYTHON:-python3}"

command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this script needs an NVIDIA GPU" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

JAX_VERSION="$(sed -n 's/^ *"jax==\([^"]*\)".*/\1/p' pyproject.toml | head -1)"
[ -n "$JAX_VERSION" ] || { echo "no jax==VERSION pin found in pyproject.toml" >&2; exit 1; }
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "jax[cuda12]==$JAX_VERSION" -e .
"$VENV/bin/python" -c 'import jax; d = jax.devices(); assert d[0].platform == "gpu", d; print("jax", jax.__version__, d)'

# XLA may take most of the GPU's memory up front; the largest batch needs it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec timeout 480 "$VENV/bin/python" benchmarks/gpu_step.py "$@"
