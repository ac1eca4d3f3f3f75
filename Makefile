# The two commands a newcomer needs: `make run` and `make test`.
# Without DATABASE_URL (TEST_DATABASE_URL for tests) both use the embedded
# PostgreSQL server in instance/postgres, started and stopped as needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
TEST_WORKERS ?= 2
export PORTAL_ENV ?= development

.PHONY: run test bench lint screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes. The dev extra brings the embedded
# PostgreSQL server, so `make run` installs it too.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi seed-demo
	$(BIN)/flask --app wsgi run --host 127.0.0.1 --port $(PORT)

test: $(VENV)/.installed
	PORTAL_ENV=test $(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Retake docs/screenshots from the demo data (the browser tests take them).
screenshots: $(VENV)/.installed
	PORTAL_ENV=test UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/browser -k screenshots

lint: $(VENV)/.installed
	$(BIN)/ruff check portal tests bench wsgi.py gunicorn_config.py
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache
