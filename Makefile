# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
export PORTAL_ENV ?= development

.PHONY: run test bench lint screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi seed-demo
	$(BIN)/flask --app wsgi run --host 127.0.0.1 --port $(PORT)

test: $(VENV)/.installed-dev
	PORTAL_ENV=test $(BIN)/python -m pytest $(PYTEST_ARGS)

# Retake docs/screenshots from the demo data (the browser tests take them).
screenshots: $(VENV)/.installed-dev
	PORTAL_ENV=test UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/browser -k screenshots

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check portal tests bench wsgi.py gunicorn_config.py
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) instance/portal.db* .pytest_cache
