# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# Both create the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test env lint clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is a local CPU wheel here; anything else pulls GBs of CUDA
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,train]'
	touch $(STAMP)
	@echo "installed: put midicorpus and duckdb on your PATH with  . $(VENV)/bin/activate  (or call $(BIN)/midicorpus)"

demo: $(STAMP)
	$(BIN)/midicorpus run
	@echo "next: . $(VENV)/bin/activate, then the README's commands (midicorpus sql ..., midicorpus lake shell)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check corpus schemas flows train reports tests
	$(BIN)/ruff format --check corpus schemas flows train reports tests

clean:
	rm -rf lake .pytest_cache
