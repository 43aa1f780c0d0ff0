# Two commands for a newcomer: `make demo` and `make test`. Each installs what is missing first.
# PYTHON picks the interpreter for the virtual environment (3.12 or newer); the default finds 3.12.
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 python3; do \
            $$p -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { command -v $$p || echo $$p; } && break; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

# Reinstalls whenever pyproject.toml (the one place versions are pinned) changes.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "No Python 3.12 found: install it or run make PYTHON=/path/to/python3.12"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) launch.py --config=configs/demo.py --workdir=runs/demo

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
