# Set-up and everyday commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job so far: paper-size networks -> ONNX stage graphs -> parity on the bundled CT.
demo: $(VENV)/installed
	$(PY) -m training.networks
	$(PY) -m export --init random --seed 0 --out build/weights
	$(PY) -m export --check build/weights

test: $(VENV)/installed lint
	$(PY) -m pytest

lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/installed
	$(PY) benchmarks/networks.py
	$(PY) benchmarks/stage_graphs.py

clean:
	rm -rf $(VENV) build results
