# One command to set up and run each job; every target creates the virtual environment itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup quickstart test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job: start the reference Engine, send a turn, show /health, drain and stop.
quickstart: $(STAMP)
	$(BIN)/python scripts/quickstart.py

# The whole test suite, on both cores.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2

# Benchmarks against cp+sync and sqlite3 .backup; results go to bench/RESULTS.md (not part of the tests).
bench: $(STAMP)
	$(BIN)/python bench/bench_brain.py

clean:
	rm -rf $(VENV) .pytest_cache
