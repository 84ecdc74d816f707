# The README's two commands: `make run` (main job) and `make test` (whole suite).
# Both need only Python >= 3.10 and make: the venv is created and filled on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Offline machine: never phone home (Prefect server + SDK, MLflow).
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test test-fast lint bench ui clean-stores install install-dev wheel

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "aevb-pipeline needs Python >= 3.10")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamp files: reinstall only when the declared dependencies or the lock change.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The package as users install it (see README "Install as a package"; CI: .ci/wheel-smoke).
wheel: $(BIN)/python
	$(PIP) wheel --quiet --no-deps --wheel-dir dist .
	@ls dist/*.whl

run: $(VENV)/.installed
	$(BIN)/aevb pipeline digits $(ARGS)

# The suite on PYTEST_WORKERS processes (pytest-xdist), each test file whole on one worker so its
# module fixtures are built once; each worker has its own temp stores, Prefect home and harness.
# PYTEST_WORKERS=0 runs it in this process, one test at a time; =auto, one worker per core.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadfile --durations=20

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/train_throughput.py

# The embedded MLflow store the CLI uses from this folder (README "Where data and stores go").
MLFLOW_DIR = $(or $(AEVB_MLFLOW_DIR),$(if $(AEVB_HOME),$(AEVB_HOME)/mlflow,$(CURDIR)/mlflow))
ui: $(VENV)/.installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_DIR)/mlflow.db --default-artifact-root $(MLFLOW_DIR)/artifacts --host 127.0.0.1 --port 5000

clean-stores:
	rm -rf data/datasets data/latents data/restored data/checkpoints mlflow/mlflow.db mlflow/artifacts
