# Every target bootstraps its own virtualenv from pyproject.toml: a fresh clone needs only
# Python >= 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
VENV2 ?= .venv-genai2
VENVB ?= .venv-bench
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv bench-venv test test-genai2 demo bench fleet lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Benchmarks and their tests run here: the peers (LiteLLM) and the LP solver live only in this venv.
$(VENVB)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENVB)
	$(VENVB)/bin/pip install --quiet --upgrade pip
	$(VENVB)/bin/pip install --quiet -e '.[dev,bench]'
	touch $@

bench-venv: $(VENVB)/.installed

# The whole suite (unit, integration against the simulator/emulator/redis, DAG runs), then the
# benchmarks' CI-sized samples with their thresholds (tests/bench, in the bench venv).
test: venv bench-venv
	$(PY) -m pytest -q --ignore=tests/bench $(PYTEST_ARGS)
	$(VENVB)/bin/python -m pytest -q tests/bench $(PYTEST_ARGS)

# The google-genai 2.x leg: what users with apache-airflow-providers-google installed run.
# The whole suite, not only the SDK <-> simulator tests (marked genai2): 2.x calls /v1beta.
$(VENV2)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV2)
	$(VENV2)/bin/pip install --quiet --upgrade pip
	$(VENV2)/bin/pip install --quiet -e '.[dev]' 'google-genai>=1.66,<3'
	touch $@

test-genai2: $(VENV2)/.installed
	$(VENV2)/bin/python -c "import google.genai as g; v=g.__version__; assert v.startswith(('1.','2.')), v; print('google-genai', v)"
	$(VENV2)/bin/python -m pytest -q --ignore=tests/bench $(PYTEST_ARGS)

# Runs the example DAG end to end on the embedded defaults; leaves images under .demo/output.
demo: venv
	$(PY) scripts/demo.py

bench: bench-venv
	$(VENVB)/bin/python -m bench

# A real Airflow deployment on loopback (LocalExecutor, parallelism 4; Redis, fake-gcs-server,
# simulator) running the sharded example DAG: 400 items over 4 shards at the channels' caps.
# FLEET_ARGS="--fault kill-worker" (or redis-restart, triggerer-restart) injects a fault.
FLEET_ARGS ?=
fleet: bench-venv
	nice -n 10 $(VENVB)/bin/python -m bench fleet $(FLEET_ARGS)

lint: venv
	$(VENV)/bin/ruff check airflow_banana dags tests bench scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(VENV2) $(VENVB) .demo .pytest_cache .mypy_cache .ruff_cache
