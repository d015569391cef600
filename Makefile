# Two entry points for a fresh machine with Python 3.11: `make repro` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: env repro test test-fast clean-env

env: $(VENV)/.installed

# torch is installed first and pinned, so no dependency can pull a (multi-GB CUDA) newer build.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# dvc repro rebuilds what changed; the README's results table is then regenerated from metrics/.
repro: env
	$(BIN)/dvc repro
	$(BIN)/python -m mmser.readme

test: env
	$(BIN)/pytest -q

test-fast: env
	$(BIN)/pytest -q -m "not slow"

clean-env:
	rm -rf $(VENV)
