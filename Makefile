# Two entry points (see README): `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck unit bench proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-installed

# Quix Streams pins confluent-kafka below the version the rest uses: its tests get their own venv.
QVENV := .venv-quix
QUIX_TESTS := tests/test_quix_store.py tests/test_quix_adapter.py
$(QVENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(QVENV)
	$(QVENV)/bin/pip install -q --upgrade pip
	$(QVENV)/bin/pip install -q -e '.[test,quix]'
	touch $@

## run: install and start the server on its embedded default (127.0.0.1:7070, ./tierstore-data)
run: $(VENV)/.run-installed
	$(BIN)/tierstore serve

## test: install everything (test brokers included) and run lint, types and the whole suite
test: $(VENV)/.test-installed lint typecheck unit

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy -p tierstore

unit: $(VENV)/.test-installed $(QVENV)/.test-installed
	$(BIN)/pytest -q -ra
	$(QVENV)/bin/pytest -q -ra $(QUIX_TESTS)

## bench: run the benchmarks at full size (python -m bench --help for one at a time)
bench: $(VENV)/.test-installed
	$(BIN)/python -m bench all

## proto: regenerate tierstore/v1 from proto/ (checked in; a test fails if it is stale)
proto: $(VENV)/.test-installed
	PATH=$(BIN):$$PATH $(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) $(QVENV) .mypy_cache .ruff_cache .pytest_cache
