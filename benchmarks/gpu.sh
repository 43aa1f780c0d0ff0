#!/usr/bin/env bash
# The accelerator check in one command (benchmarks/gpu_step.py): fine-tune step images/s, MFU,
# compiled FLOPs and peak memory for VGG16 224 px bf16 at batch 64/128/256 with unfreeze_blocks 1
# and all; the head step; inference; the host decode rate. Made for a machine with no network
# (the accelerator machine the `device` tool lends; BUILD.md, GPU):
#
#   make gpu-wheels                  # here, with network: .whl/ (git-ignored)
#   bash benchmarks/gpu.sh [gpu_step.py flags, e.g. --batches=64,128 --steps=10]
#   bash benchmarks/gpu.sh --dry-run # the same path at tiny size on the CPU (no GPU check)
#
# Uses the machine's own $PYTHON (default python3) and its jax, flax, optax and orbax; installs
# nothing from a registry: the pure-Python packages that machine lacks come from .whl/ into
# /tmp/site, and the package itself runs from this checkout (PYTHONPATH). Writes gpu_step.json and
# gpu.log under $OUT (default runs/gpu). Stops after 9 minutes; exits nonzero if a setting failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT"

ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu.sh: no wheels in .whl/: run 'make gpu-wheels' where pip reaches PyPI and carry .whl" >&2; exit 2; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

case " $* " in
  *" --dry-run "*) ;;
  *)
    # One line and a nonzero exit where jax finds no GPU (it would fall back to the CPU).
    platform="$("$PYTHON" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null || echo none)"
    if [ "$platform" != "gpu" ]; then
      echo "gpu.sh: no GPU: jax on $PYTHON sees '$platform' devices; run it on the accelerator machine, or pass --dry-run" >&2
      exit 3
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    ;;
esac
"$PYTHON" -c 'import flax, jax, jaxlib, optax; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__)'

# Each setting runs in its own process; XLA may take most of the GPU's memory up front there.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}" PYTHONUNBUFFERED=1
timeout 540 "$PYTHON" benchmarks/gpu_step.py --budget=480 --out="$OUT" "$@" 2>&1 | tee "$OUT/gpu.log"
