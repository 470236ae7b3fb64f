# Two entry points for a fresh machine (see README):
#   make run   - install into .venv/ and run the main job on the bundled examples
#   make test  - install with the test extras (and the Azurite emulator) and run the whole suite
# torch is pinned through constraints.txt in the same pip command as everything that needs it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
PYTEST_ARGS ?=

.PHONY: run test install install-test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(PIP) -e '.[serve]'

install-test: $(BIN)/python
	$(PIP) -e '.[test]'
	npm ci --no-audit --no-fund --loglevel=error

run: install
	$(BIN)/lungseg compare --shipped --data examples --out results --models unet,fcn,deeplabv3,unet-fast,ensemble

test: install-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

clean:
	rm -rf $(VENV) node_modules results .pytest_cache
