# fluxhook: `make run` starts the service on SQLite with the embedded BFL emulator;
# `make test` runs the whole suite. Both create .venv and install what they need.
# `make lock` regenerates requirements.txt (what Heroku installs) after a change to
# pyproject's dependencies; `make test` fails while it is stale.
PYTHON ?= python3
# The lock is resolved on the Python that Heroku runs (.python-version).
LOCK_PYTHON ?= python$(shell cat .python-version)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint lock bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fluxhook migrate
	$(BIN)/fluxhook serve

test: $(STAMP)
	$(BIN)/ruff check service tests bench alembic
	$(BIN)/ruff format --check service tests bench alembic
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests bench alembic
	$(BIN)/ruff format --check service tests bench alembic

# A fresh venv with only the runtime dependencies: its freeze is the whole pinned closure.
lock: $(STAMP)
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(LOCK_PYTHON) -m venv "$$tmp/venv"; \
	$(BIN)/python -m tests.support.lockfile dependencies > "$$tmp/dependencies.txt"; \
	"$$tmp/venv/bin/python" -m pip install --quiet -r "$$tmp/dependencies.txt"; \
	"$$tmp/venv/bin/python" -m pip freeze --exclude fluxhook > "$$tmp/freeze.txt"; \
	$(BIN)/python -m tests.support.lockfile write < "$$tmp/freeze.txt"

bench: $(STAMP)
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke
	$(BIN)/python -m bench.outbound --runs 1 --requests 100

clean:
	rm -rf $(VENV) fluxhook.db fluxhook.db-wal fluxhook.db-shm
