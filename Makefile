# Two commands on a fresh machine: `make demo` (set up + main job) and `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/openmusk: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first: an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/openmusk

demo: setup
	$(BIN)/openmusk demo --out openmusk_demo

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) openmusk_demo .pytest_cache
