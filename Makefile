# The two commands of the README. Each creates (or reuses) .venv and installs clbench into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

# make run: every default agent (leaderboard list) on one offline stream, seed 0, RUN_TRAIN training images per task
RUN_TRAIN ?= 400

.PHONY: run test lint leaderboard

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	-$(VENV)/bin/clbench leaderboard run --suite offline --entry OneVsRestMNIST5k-v0 --seeds 0 \
	    --env-arg max_train_per_task=$(RUN_TRAIN) --workers 2 --device auto --results runs/leaderboard
	$(VENV)/bin/clbench table runs/leaderboard

test: $(STAMP)
	$(VENV)/bin/ruff check clbench agents baselines tests benchmarks
	$(VENV)/bin/python -m pytest -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check clbench agents baselines tests benchmarks

leaderboard: $(STAMP)
	$(VENV)/bin/clbench leaderboard build --readme README.md
