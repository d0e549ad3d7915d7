# Quick start: `make repro` then `make test`. Both create .venv from the pins if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands say `python -m stages.X`: put the venv first so DVC runs them with it.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: repro test lint lock exp sweep ui compare factsheet tracking-server workers probe bench clean-venv

# uv (pinned in requirements.txt) installs requirements.lock, the tested set at exact versions,
# in seconds where pip takes minutes; pip installs the same lock where uv cannot run.
UV_PIN = $(shell grep -o '^uv==[^ ]*' requirements.txt)
PIP = $(BIN)/python -m pip install --quiet --disable-pip-version-check
$(INSTALLED): requirements.txt requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(PIP) $(UV_PIN) && $(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock; } \
	  || $(PIP) -r requirements.lock
	touch $(INSTALLED)

# After changing a pin in requirements.txt: resolve it again into requirements.lock.
lock: $(INSTALLED)
	{ grep '^#' requirements.lock; $(BIN)/uv pip compile --quiet --python-version 3.11 \
	  --no-header --no-annotate requirements.txt; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

repro: $(INSTALLED)
	$(BIN)/dvc repro

# -rs: the summary names every skipped test and why (a system program missing, see README);
# --durations: the 25 slowest tests, to keep the suite short on 2 cores. TEST_WORKERS pytest
# processes share the files (one file's tests stay on one, so its fixtures are made once):
# much of a test is a process starting or waiting, which the other worker fills.
TEST_WORKERS ?= 2
test: $(INSTALLED)
	$(BIN)/python -m pytest tests -q -rs --durations=25 -n $(TEST_WORKERS) --dist loadfile

# Ruff's lint and format check (pyproject.toml: rules, line length 100); `ruff format .` fixes format.
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# A params preset as one DVC experiment: make exp PRESET=presets/tum.yaml [EXP_ARGS="-n tum"]
# (EXP_ARGS: more `dvc exp run` arguments). stages/exp.py checks the params, then hands DVC
# the preset's -S arguments as a list: no shell quoting between a value and DVC.
PRESET ?= presets/tum.yaml
exp: $(INSTALLED)
	$(BIN)/python -m stages.exp $(PRESET) $(EXP_ARGS)

# A grid of DVC experiments, one per combination, queued and started (defaults in the grid
# file, sweeps/default.yaml): make sweep [GRID=sweeps/x.yaml] [JOBS=2] [DRY=1] [WAIT=1] [FORCE=1]
sweep: $(INSTALLED)
	$(BIN)/python -m stages.sweep $(GRID) $(if $(JOBS),--jobs $(JOBS)) $(if $(DRY),--dry-run) \
	  $(if $(WAIT),--wait) $(if $(FORCE),--force)

# The organizers' hint: random weights -> TFLite -> timing, for every architecture.
probe: $(INSTALLED)
	$(BIN)/python -m stages.probe --arch all

bench: $(INSTALLED)
	$(BIN)/python -m bench.latency

# Lean local MLflow UI on the project's absolute sqlite store (one worker, no job runner).
# Artifacts stay file-based, so `track` can keep logging to mlflow.db while it runs.
# First the link to open: the experiment's training runs (MLflow 3 opens on GenAI pages).
UI_PORT ?= 5000
MLFLOW_ENV = MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
ui: $(INSTALLED)
	-@$(BIN)/python -m pipeline.tracking.runs ui-link --port $(UI_PORT)
	$(MLFLOW_ENV) $(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlartifacts --no-serve-artifacts \
	  --workers 1 --host 127.0.0.1 --port $(UI_PORT)

# Per validation data set: table, Pareto fronts of si-RMSE vs latency and vs est. Pi 4 ms,
# the best challenge score -> reports/compare/
compare: $(INSTALLED)
	$(BIN)/python -m stages.compare

# The challenge fact sheet (markdown) of the newest tracked run -> reports/factsheet.md
factsheet: $(INSTALLED)
	$(BIN)/python -m stages.factsheet

# Team server: a SQL backend plus an artifact root that the server proxies.
# Clients: MLFLOW_TRACKING_URI=http://<host>:$(TRACKING_PORT) dvc exp run ...
# TRACKING_DB e.g. postgresql://mlflow:PW@dbhost/mlflow (driver: psycopg, in requirements.txt)
# TRACKING_ARTIFACTS e.g. s3://bucket/mlflow (needs boto3) or a shared folder
TRACKING_DB ?= sqlite:///$(CURDIR)/mlflow-server.db
TRACKING_ARTIFACTS ?= $(CURDIR)/mlartifacts-server
TRACKING_HOST ?= 0.0.0.0
TRACKING_PORT ?= 5000
TRACKING_ALLOWED_HOSTS ?= $(shell hostname),$(shell hostname):$(TRACKING_PORT),localhost,localhost:$(TRACKING_PORT),127.0.0.1,127.0.0.1:$(TRACKING_PORT)
tracking-server: $(INSTALLED)
	$(MLFLOW_ENV) $(BIN)/mlflow server --backend-store-uri $(TRACKING_DB) \
	  --artifacts-destination $(TRACKING_ARTIFACTS) --host $(TRACKING_HOST) --port $(TRACKING_PORT) \
	  --workers 2 --allowed-hosts $(TRACKING_ALLOWED_HOSTS)

# Training with WORKERS processes on this machine (train.strategy multi_worker, loopback
# ports in TF_CONFIG); worker 0 writes the train stage's outputs. Real hosts: docs/scale-out.md
WORKERS ?= 2
workers: $(INSTALLED)
	$(BIN)/python -m stages.workers --workers $(WORKERS)

clean-venv:
	rm -rf $(VENV)
