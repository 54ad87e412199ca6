# The two commands of the README. Each creates (or reuses) .venv and installs clbench into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/clbench run --env clbench/SplitMNIST5k-v0 --agent random --seed 0 --device auto --out runs/random.json
	$(VENV)/bin/clbench run --env clbench/SplitMNIST5k-v0 --agent naive --seed 0 --device auto --out runs/naive.json
	$(VENV)/bin/clbench table runs/random.json runs/naive.json

test: $(STAMP)
	$(VENV)/bin/ruff check clbench agents baselines tests benchmarks
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check clbench agents baselines tests benchmarks
