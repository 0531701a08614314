# symdl: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-test
BENCH_INSTALLED := $(VENV)/.installed-bench
DEMO_INSTALLED := $(VENV)/.installed-demo
DOCS_INSTALLED := $(VENV)/.installed-docs

.PHONY: test demo docs pdflatex bench bench-derive bench-kernels lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(DEMO_INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	touch $@

$(DOCS_INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

$(BENCH_INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@

# pdflatex for the LaTeX tests and reports: Debian's TeX Live packages, when it is missing.
pdflatex:
	@command -v pdflatex >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  texlive-latex-base texlive-latex-recommended >/dev/null; }

# One worker per core, each test file on one worker (its module fixtures compile once).
test: $(INSTALLED) pdflatex
	$(BIN)/python -m pytest -q -n auto --dist loadfile

demo: $(INSTALLED) $(DEMO_INSTALLED) pdflatex
	$(BIN)/symdl demo --newton

# The API reference from the docstrings (Sphinx autodoc), warnings as errors, nothing
# downloaded; the test suite builds it too (tests/test_docs.py).
docs: $(DOCS_INSTALLED)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs build/docs
	@echo "API reference: build/docs/index.html"

# Benchmarks (optional dependencies: JAX, PyTorch 2.13.0 CPU, SciPy for Numba's np.dot).
bench: bench-derive bench-kernels

bench-derive: $(BENCH_INSTALLED)
	$(BIN)/python benchmarks/derive_cost.py

bench-kernels: $(BENCH_INSTALLED)
	$(BIN)/python benchmarks/kernels_bench.py
	$(BIN)/python benchmarks/warm_start.py

lint: $(INSTALLED)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/python -m ruff check symdl derivations tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
