# Everything runs from a project-local virtualenv (.venv) built from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install kernels run lint test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,tensorrt,mobile,report,ray]'
	$(BIN)/python -m compress.nncf_kernels   # NNCF's C++ fake-quant kernels for QAT (~40 s once; needs g++, else pure torch)
	touch $@

kernels: install      ## (re)build NNCF's C++ fake-quant kernels, e.g. after installing a C++ compiler
	$(BIN)/python -m compress.nncf_kernels

run: install          ## install, then run the quickstart recipe
	$(BIN)/compress run recipes/quickstart.yaml

lint: install         ## ruff (settings in pyproject.toml [tool.ruff])
	$(BIN)/ruff check .

test: install         ## the test suite, both tiers (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: install    ## the fast tier: no pipeline runs, no CLI subprocesses (about a minute)
	$(BIN)/python -m pytest -q -m "not slow"

bench: install        ## side-by-side timings (minutes; prints ratios)
	$(BIN)/python benchmarks/bench_int8.py

clean:
	rm -rf runs .pytest_cache
