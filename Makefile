# Everything from a fresh clone: `make demo` and `make test` create .venv and install what they need, and only
# that: the demo the command line's extra (pemn[cli]); the tests the test stack besides (pemn[test]: transformers,
# ONNX, ... about 1.8 GB), installed by the first `make test` (or `make install`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# One stamp per extra: each is redone when it is older than what it was installed from.
STAMP_CLI  := $(VENV)/.pemn-cli
STAMP_TEST := $(VENV)/.pemn-test

.PHONY: install install-cli demo test test-fast lint bench clean

$(STAMP_CLI): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU wheel first, pinned, so no multi-GB CUDA build of torch is ever pulled in here.
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e ".[cli]"
	touch $(STAMP_CLI)

$(STAMP_TEST): $(STAMP_CLI)
	$(PIP) -c constraints.txt -e ".[cli,test]"
	touch $(STAMP_TEST)

# pemn and its command line (what `make demo` needs)
install-cli: $(STAMP_CLI)

# that and the test stack
install: $(STAMP_TEST)

demo: $(STAMP_CLI)
	$(BIN)/pemn train

# The tests run in one pytest-xdist worker per CPU (-n auto), each test file's tests spread over the workers as they
# come free (worksteal); tests/conftest.py gives each worker one torch thread. `pytest -q` alone runs them in one.
test: $(STAMP_TEST)
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python -m pytest -q -n auto --dist worksteal

# The developer loop: everything but the tests marked slow (subprocesses, torchrun, ONNX, real-data runs).
test-fast: $(STAMP_TEST)
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m "not slow"

# ruff, then the import layers of .importlinter (the core never imports the application)
lint: $(STAMP_TEST)
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/lint-imports --no-logo --no-cache

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
