# The two commands: `make demo` and `make test`. Both create the venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench chaos soak contracts clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded,tracing]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleet demo

# The suite in two processes, each with its own embedded servers; a test file stays in
# one process, so its module fixtures (an embedded cluster, say) start once.
test: lint typecheck
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=20

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP)
	$(BIN)/python tests/perf/bench_runtime.py
	$(BIN)/python tests/perf/bench_scan_metrics.py
	$(BIN)/python tests/perf/bench_vex.py
	$(BIN)/python tests/perf/bench_exports.py
	$(BIN)/python tests/perf/bench_cluster.py

chaos: $(STAMP)
	FLEET_CHAOS_EVENTS=100000 FLEET_CHAOS_SECONDS=240 $(BIN)/python -m pytest tests/faults/test_chaos.py -s -p no:cacheprovider -o timeout=900
	FLEET_CLUSTER_CHAOS_EVENTS=40000 FLEET_CLUSTER_CHAOS_SECONDS=120 FLEET_CLUSTER_CHAOS_KILLS=6 $(BIN)/python -m pytest tests/faults/test_cluster_failover.py -s -p no:cacheprovider -o timeout=900
	FLEET_OUTAGE_SECONDS=60 $(BIN)/python -m pytest tests/faults/test_postgres_outage.py -s -p no:cacheprovider -o timeout=900

# Not part of `make test`: a million events, a consumer restarted every minute, memory sampled.
soak: $(STAMP)
	FLEET_SOAK_EVENTS=1000000 $(BIN)/python -m pytest tests/faults/test_soak.py -s -p no:cacheprovider -o timeout=1800

contracts: $(STAMP)
	$(BIN)/fleet contracts export

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache .hypothesis
