# cellseg: `make demo` runs the embedded demo (configs/demo.yaml), `make test`
# every check (CI), `make quick` the fast tier for the edit loop. Each
# bootstraps .venv itself (Python >= 3.10 as python3).

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.cellseg-installed
# Shell rules call `cellseg`: the venv's bin comes first on PATH.
RUN := PATH="$(BIN):$$PATH"
LINT_PATHS := $(wildcard cellseg tests benchmarks)

.PHONY: all venv demo test quick lint sysdeps spatialdata-venv clean distclean

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

# System libraries of the napari tests: a virtual X server (Xvfb, started by
# pytest-xvfb) and what Qt 6 and OpenGL need (Debian / Ubuntu names). Installed
# with apt-get when run as root; otherwise the missing ones are named and the
# napari tests skip, saying why.
SYSDEPS := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 \
	fonts-dejavu-core libdbus-1-3 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
	libxcb-xfixes0 libxcb-xinerama0
# (beside .venv, not in it: the venv is built at the same time and may be cleared)
SYSDEPS_STAMP := .venv-sysdeps.stamp

sysdeps: $(SYSDEPS_STAMP)

$(SYSDEPS_STAMP): Makefile
	@missing=""; for p in $(SYSDEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing system libraries for the napari tests:$$missing"; \
	  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null; then touch $@; \
	  else echo "warning: apt-get could not install$$missing; the napari tests will skip"; fi; \
	else \
	  echo "note: the napari tests need these system packages:$$missing"; \
	  echo "      install them (e.g. sudo apt-get install$$missing); until then they skip"; \
	fi

# The SpatialData export's own venv: spatialdata (0.8 needs Python >= 3.12) would move
# pins of .venv (dask, ome-zarr), so it gets spatialdata and cellseg's dependencies
# without torch and monai (the export needs neither). Python 3.12 or 3.13 when one is
# found (on PATH or under pyenv), else $(PYTHON) (then an older spatialdata).
# tests/test_spatialdata.py runs the export and the read-back there; when the venv
# cannot be built (no package index), `make test` goes on and those tests skip.
SD_VENV := .venv-spatialdata
SD_STAMP := $(SD_VENV)/.cellseg-installed
SPATIALDATA_PYTHON ?= $(firstword $(shell for p in python3.12 python3.13 \
	$$HOME/.pyenv/versions/3.12*/bin/python3 $$HOME/.pyenv/versions/3.13*/bin/python3; do \
	$$p -c '' 2>/dev/null && echo $$p; done) $(PYTHON))
SD_DEPS := import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print(' '.join(d for d in p['dependencies'] + p['optional-dependencies']['spatialdata'] \
	if not d.startswith(('torch', 'monai'))))

spatialdata-venv: $(SD_STAMP)

$(SD_STAMP): pyproject.toml
	@{ $(SD_VENV)/bin/python -c 'import sys' 2>/dev/null || $(SPATIALDATA_PYTHON) -m venv --clear $(SD_VENV); } \
	  && $(SD_VENV)/bin/python -m pip install -q $$($(SD_VENV)/bin/python -c "$(SD_DEPS)") \
	  && $(SD_VENV)/bin/python -m pip install -q --no-deps -e . \
	  && touch $@ \
	  || echo "warning: $(SD_VENV) could not be built; the SpatialData tests will skip"

demo: venv
	$(RUN) $(VENV)/bin/snakemake --cores all --configfile configs/demo.yaml
	@echo
	@echo "Demo outputs, one folder per scan under results/:"
	@echo "  results/<scan>/<scan>.ome.zarr   image + labels/cells (napari --plugin cellseg results/demo2d -w cellseg)"
	@echo "  results/<scan>/cells.parquet     one row per cell (pandas.read_parquet)"
	@echo "  results/<scan>/report.html       QC report (open in a browser)"
	@echo "  results/cells.parquet, results/report.html   all scans' cells and the run's report"
	@echo "  results/<scan>/logs/             one log per job"

# ruff, the Snakefile's lint (with the demo config: the template lists no
# scans) and the package's import contracts (pyproject.toml, [tool.importlinter]).
lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(RUN) $(VENV)/bin/snakemake --lint --configfile configs/demo.yaml
	$(VENV)/bin/lint-imports --no-cache

# Everything: the tests and the doctests of every module (pyproject.toml). The
# three preparations are independent (two venvs and apt): they run side by side.
test:
	@$(MAKE) --no-print-directory -j3 lint sysdeps spatialdata-venv
	$(RUN) $(VENV)/bin/python -m pytest -q

# The fast tier (a few minutes on 2 cores): no end-to-end runs (`slow`,
# `slurm`), no napari viewer, no notebook execution; doctests included.
QUICK_SKIP := --ignore=tests/test_napari_reader.py --ignore=tests/test_napari_widget.py \
	--ignore=tests/test_notebook.py
quick: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(RUN) $(VENV)/bin/python -m pytest -q -m "not slow and not slurm" $(QUICK_SKIP)

clean:
	rm -rf results demo_data .snakemake .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) $(SD_VENV) $(SYSDEPS_STAMP) *.egg-info
