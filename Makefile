# Two commands on a fresh machine: `make demo` (set up + main job) and `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# torch comes from the CPU-only wheel index unless an NVIDIA GPU answers `nvidia-smi -L`; there the
# default index gives the CUDA build. Override with TORCH_INDEX=URL (or TORCH_INDEX= for the default).
HAS_NVIDIA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_INDEX ?= $(if $(HAS_NVIDIA),,https://download.pytorch.org/whl/cpu)

.PHONY: setup demo test bench clean

$(BIN)/openmusk: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@idx="$(TORCH_INDEX)"; \
	if [ -n "$$idx" ] && ! $(PY) -c "import socket, sys, urllib.parse as u; socket.getaddrinfo(u.urlparse(sys.argv[1]).hostname, 443)" "$$idx" 2>/dev/null; then \
	  echo "$$idx is unreachable (offline?): torch from pip's own configuration (its local wheels)"; idx=; fi; \
	echo "torch 2.13.0 from $${idx:-pip's configured index}"; \
	$(BIN)/pip install -q $${idx:+--index-url $$idx} torch==2.13.0
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
