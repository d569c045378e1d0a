# The two commands of the README: `make run` (the main job on the embedded default)
# and `make test`. Both create .venv and install the package on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/reliability demo

test: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/incidents.py
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/alert_latency.py
	$(BIN)/python bench/detect.py
	$(BIN)/python bench/runbook.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/rollback.py
	$(BIN)/python bench/gpu_check.py
	$(BIN)/python bench/loadgen.py
	$(BIN)/python bench/slack_clicks.py
	$(BIN)/python bench/cluster.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
