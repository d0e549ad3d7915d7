# Quick start: `make repro` then `make test`. Both create .venv from the pins if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands say `python -m stages.X`: put the venv first so DVC runs them with it.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: repro test ui tracking-server probe bench clean-venv

$(INSTALLED): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(INSTALLED)

repro: $(INSTALLED)
	$(BIN)/dvc repro

test: $(INSTALLED)
	$(BIN)/python -m pytest tests -q

clean-venv:
	rm -rf $(VENV)
