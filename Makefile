# Both entry points create .venv on first use, from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all docs lint typecheck mutation clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,docs,openvino,text,torchao,timeseries,keywords]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fulcrum demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/pytest -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test-all: $(STAMP)
	$(BIN)/pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# slow (not part of `make test`): mutmut over the modules in pyproject's [tool.mutmut], then
# the per-module scores into benchmarks/results/mutation.json
mutation: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt 'mutmut>=3.3'
	rm -rf mutants
	$(BIN)/mutmut run || true
	$(BIN)/python benchmarks/mutation.py

clean:
	rm -rf $(VENV) runs site mutants .pytest_cache .mypy_cache .ruff_cache
