# One command to set up and run each job; every target creates the virtual environment itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup drill quickstart test docker bench bench-detection bench-rollback bench-startup soak clean

setup: $(STAMP)

# backout and, as its own distribution, the reference Engine (the default drill, tests and benches use it).
$(STAMP): pyproject.toml reference-engine/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e ./reference-engine
	touch $(STAMP)

# The main job: a rollback drill on a self-contained staging deployment; the report in .backout/drills/.
drill: $(STAMP)
	$(BIN)/backout drill

# Start the reference Engine, send a turn, show /health, drain and stop.
quickstart: $(STAMP)
	$(BIN)/python scripts/quickstart.py

# The whole test suite, on both cores. As root it first sets up Docker, Compose v2, a local
# registry and the engine:<version> images (scripts/docker/); elsewhere the compose tests skip.
# Then real third-party services from PyPI (their virtual environments cached in
# ~/.cache/backout-thirdparty) upgraded and rolled back through the CLI.
# Last, the random operator scenarios and the fault-injection sweep (bounded profiles, fixed seeds).
test: $(STAMP) docker
	$(BIN)/python -m pytest -n 2 -m "not live and not rehearsal and not scenarios and not thirdparty"
	$(BIN)/python -m pytest -n 2 -m thirdparty
	$(BIN)/python -m pytest -n 2 -m live
	$(BIN)/python -m pytest -n 2 -m rehearsal
	$(BIN)/python -m pytest -n 2 -m scenarios

# Docker engine on a private socket, Compose v2, registry on 127.0.0.1:5000, engine images.
docker: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && [ "$${BACKOUT_NO_DOCKER:-0}" != 1 ]; then \
		scripts/docker/setup.sh && scripts/docker/build-images.sh --push; \
	else echo "not root (or BACKOUT_NO_DOCKER=1): skipping Docker setup; compose tests will be skipped"; fi

# Benchmarks against cp+sync and sqlite3 .backup; results go to bench/RESULTS.md (not part of the tests).
bench: $(STAMP)
	$(BIN)/python bench/bench_brain.py

# Time from a switch to a broken build until `backout check` says roll-back (about 15 minutes).
bench-detection: $(STAMP)
	$(BIN)/python bench/bench_detection.py

# Time from `backout rollback --yes` to healthy per step, image and brain layer, 1 GB brain, vs the runbook's commands (about 5 minutes).
bench-rollback: $(STAMP)
	$(BIN)/python bench/bench_rollback.py

# Start-up time of backout --version, --help and status against `python -c pass` (under a minute).
bench-startup: $(STAMP)
	$(BIN)/python bench/bench_startup.py

# Long profiles: >= 300 random operator scenarios and a long fault-injection sweep (hours); counts to bench/RESULTS.md.
soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache
