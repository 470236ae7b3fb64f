# Two entry points for a fresh machine (see README):
#   make run   - install into .venv/ and run the main job on the bundled examples
#   make test  - install with the test extras (and the Azurite emulator) and run the whole suite
# torch is pinned through constraints.txt in the same pip command as everything that needs it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
# Two workers (pytest-xdist): most tests run one thread or wait on a subprocess, a browser or a
# server, so on 2 cores the suite takes about 10 minutes instead of 16. worksteal: a worker that
# runs out takes tests queued for the other (the suite ends with a few minute-long tests); with
# the gpu_session test's training box cut from 25 to 15 s: 9:56 against 10:05 (one run each).
PYTEST_ARGS ?= -n 2 --dist worksteal
# OHIF's prebuilt viewer (the dist/ folder of npm's @ohif/app) for the viewer test, pinned by
# version and sha512. It is not a package.json dependency: npm ci would resolve @ohif/app's build
# dependencies, and some of them (@ohif/i18n@3.13.2) are not on the registry; the test needs only
# dist/, which `npm pack` fetches alone (50 MB, a few seconds).
OHIF_APP := @ohif/app@3.13.2
OHIF_SHA512 := WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIR := .cache/ohif-app-3.13.2

.PHONY: run test install install-test lint clean ohif

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(PIP) -e '.[serve]'

install-test: $(BIN)/python
	$(PIP) -e '.[test]'
	npm ci --no-audit --no-fund --loglevel=error
	$(MAKE) --no-print-directory ohif

ohif: $(OHIF_DIR)/dist/index.html

$(OHIF_DIR)/dist/index.html:
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)
	cd $(OHIF_DIR) && npm pack $(OHIF_APP) --loglevel=error >/dev/null
	test "$$(openssl dgst -sha512 -binary $(OHIF_DIR)/*.tgz | base64 -w0)" = "$(OHIF_SHA512)"
	tar -xzf $(OHIF_DIR)/*.tgz -C $(OHIF_DIR) --strip-components=1 package/dist
	rm $(OHIF_DIR)/*.tgz

run: install
	$(BIN)/lungseg compare --shipped --data examples --out results --models unet,fcn,deeplabv3,unet-fast,ensemble

test: install-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

clean:
	rm -rf $(VENV) node_modules results .pytest_cache .cache
