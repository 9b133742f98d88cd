# geopsp developer entry points. Every target creates .venv itself when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.geopsp-installed
PYTEST_ARGS ?=

.PHONY: venv venv-onnx test lint demo bench docs clean system-deps

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install geopsp with its dev tools

ONNX_VENV := .venv-onnx
venv-onnx:  ## torch-free inference install (~0.7 GB): predict, vectorize, evaluate, preview, batch on .onnx models
	@test -x $(ONNX_VENV)/bin/python || $(PYTHON) -m venv $(ONNX_VENV)
	$(ONNX_VENV)/bin/python -m pip install -q --upgrade pip
	$(ONNX_VENV)/bin/python -m pip install -q '.[onnx]'

system-deps:  ## Debian packages the tests use (QGIS for the real-client check)
	@bash scripts/system-deps.sh

test: $(STAMP) system-deps  ## set everything up and run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)  ## set everything up and run the whole job end to end on synthetic data
	$(BIN)/geopsp demo --out demo-out --overwrite

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check geopsp tests bench
	$(BIN)/ruff format --check geopsp tests bench
	$(BIN)/mypy

docs: $(STAMP)  ## regenerate the reference pages and build the site strictly into site/
	$(BIN)/python scripts/gen_reference.py
	$(BIN)/python -m mkdocs build --strict -d site

bench: $(STAMP)  ## run the benchmarks and write the report (docs/performance.md, bench/results/)
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) $(ONNX_VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache
