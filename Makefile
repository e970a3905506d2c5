# cellseg: `make demo` runs the embedded demo, `make test` the checks.
# Both bootstrap .venv themselves (Python >= 3.10 as python3).

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.cellseg-installed
# Shell rules call `cellseg`: the venv's bin comes first on PATH.
RUN := PATH="$(BIN):$$PATH"
LINT_PATHS := $(wildcard cellseg tests benchmarks)

.PHONY: all venv demo test lint clean distclean

all: test

venv: $(STAMP)

# (Re)install when pyproject.toml changes; create the venv when it is missing
# or broken. torch first, pinned: the CPU wheel of this exact version is
# found locally, where an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@$(VENV)/bin/python -c 'import sys' 2>/dev/null || $(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/python -m pip install torch==2.13.0
	$(VENV)/bin/python -m pip install -e '.[test]'
	@touch $(STAMP)

demo: venv
	$(RUN) $(VENV)/bin/snakemake --cores all --configfile configs/config.yaml
	@echo
	@echo "Demo outputs, one folder per scan under results/:"
	@echo "  results/<scan>/<scan>.ome.zarr   image + labels/cells (napari results/demo2d/demo2d.ome.zarr)"
	@echo "  results/<scan>/cells.parquet     one row per cell (pandas.read_parquet)"
	@echo "  results/<scan>/logs/             one log per job"

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(RUN) $(VENV)/bin/snakemake --lint

test: lint
	$(RUN) $(VENV)/bin/python -m pytest -q

clean:
	rm -rf results demo_data .snakemake .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
