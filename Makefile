# fluxhook: `make run` starts the service on SQLite with the embedded BFL emulator;
# `make test` runs the whole suite. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-smoke clean

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

bench: $(STAMP)
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) fluxhook.db fluxhook.db-wal fluxhook.db-shm
