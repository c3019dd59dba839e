# Everything from a fresh clone: `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pemn-installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU wheel first, pinned, so no multi-GB CUDA build of torch is ever pulled in here.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cli,test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/pemn train

test: install
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python -m pytest -q

# The developer loop: everything but the tests marked slow (subprocesses, torchrun, ONNX, real-data runs).
test-fast: install
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/lint-imports --no-logo --no-cache
	$(BIN)/python -m pytest -q -m "not slow"

# ruff, then the import layers of .importlinter (the core never imports the application)
lint: install
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/lint-imports --no-logo --no-cache

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
