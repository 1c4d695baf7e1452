# gpucap developer entry points. `make demo` and `make test` are the README's quick start.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench drills clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[ledger,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gpucap demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.agent_bench
	$(BIN)/python -m benchmarks.exporters_bench
	$(BIN)/python -m benchmarks.ledger_bench
	$(BIN)/python -m benchmarks.evaluate_bench

# Fault drills on loopback, each bounded in time (RELIABILITY.md); needs root for tmpfs and
# Debian's PostgreSQL binaries. `$(BIN)/python -m drills NAME ...` runs some of them.
drills: $(STAMP)
	$(BIN)/python -m drills

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
