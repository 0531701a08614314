# symdl: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-test
BENCH_INSTALLED := $(VENV)/.installed-bench

.PHONY: test demo bench bench-derive lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(BENCH_INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

demo: $(INSTALLED)
	$(BIN)/symdl derive two_layer_mlp --timing

bench: bench-derive

bench-derive: $(BENCH_INSTALLED)
	$(BIN)/python benchmarks/derive_cost.py

lint: $(INSTALLED)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/python -m ruff check symdl derivations tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
