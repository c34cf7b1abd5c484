# Every target sets itself up first (venv, packages, dataset); all steps are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_DATA := /usr/share/datasets/fashion-mnist
LOCAL_DATA := data/FashionMNIST/raw
APT_INSTALL := apt-get update && apt-get install -y dataset-fashion-mnist

# where `make sweep` writes. Fixed, so that running it again resumes an interrupted
# sweep and skips finished runs; `make sweep SWEEP_DIR=multirun/other` starts another.
SWEEP_DIR ?= multirun/sweep
# extra overrides for the sweep, e.g. `make sweep SWEEP_ARGS=force=true` to re-train a dir
# written by an older fashionbn
SWEEP_ARGS ?=

.PHONY: setup dataset test sweep plots lint clean

setup: $(STAMP) dataset

# re-installs only when pyproject.toml changes
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,launchers,loggers,datasets]"
	touch $(STAMP)

# FashionMNIST comes from Debian's dataset-fashion-mnist (nothing is downloaded at run time)
dataset:
	@if [ -f $(LOCAL_DATA)/train-images-idx3-ubyte ] || [ -f $(SYSTEM_DATA)/train-images-idx3-ubyte.gz ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing FashionMNIST: $(APT_INSTALL)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "FashionMNIST is missing. Install it with:  sudo sh -c '$(APT_INSTALL)'"; \
		echo "or copy the four *-ubyte files into $(LOCAL_DATA)/ (see docs/data.md)."; \
		exit 1; \
	fi

test: setup
	$(PY) -m pytest

# the default sweep, then its tables, plots and report
sweep: setup
	$(PY) -m fashionbn.run -m model=baseline,batchnorm seed=0,1,2 hydra.sweep.dir=$(SWEEP_DIR) $(SWEEP_ARGS)
	$(PY) -m fashionbn.aggregate $(SWEEP_DIR)

# regenerate tables, plots and report of the newest sweep under multirun/ (no training)
plots: setup
	$(PY) -m fashionbn.aggregate

lint: setup
	$(PY) -m ruff check fashionbn tests hydra_plugins
	$(PY) -m ruff format --check fashionbn tests hydra_plugins

clean:
	rm -rf outputs multirun .pytest_cache
