# The two commands: `make up` (set up, pull the embedded model, serve it) and `make test` (what CI runs).
VENV   ?= .venv
CONFIG ?= configs/quickstart.yaml
PORT   ?= 8080
BIN    := $(VENV)/bin

.PHONY: up test setup lint pull load iris bench bench-topology bench-tracing clean

up: setup
	$(BIN)/llmserve pull $(CONFIG)
	$(BIN)/llmserve up -f $(CONFIG) --port $(PORT) --routing-profiles configs/routing

test: setup lint
	$(BIN)/llmserve pull configs/quickstart.yaml
	$(BIN)/pytest

setup: $(VENV)/.llmserve-installed

$(VENV)/.llmserve-installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

pull: setup
	$(BIN)/llmserve pull $(CONFIG)

# Load a running llmserve with benchmarks/locustfile.py (headless, bounded in time); the CSVs go to LOAD_CSV_*.csv.
LOAD_URL   ?= http://127.0.0.1:$(PORT)
LOAD_USERS ?= 8
LOAD_TIME  ?= 60s
LOAD_CSV   ?= .llmserve/load/llmserve
LOAD_ARGS  ?=
load: setup
	mkdir -p $(dir $(LOAD_CSV))
	$(BIN)/locust -f benchmarks/locustfile.py --headless --host $(LOAD_URL) --users $(LOAD_USERS) \
		--spawn-rate $(LOAD_USERS) --run-time $(LOAD_TIME) --stop-timeout 30 --csv $(LOAD_CSV) --only-summary $(LOAD_ARGS)
	@echo "load: $(LOAD_CSV)_stats.csv (TTFT, ITL and E2E rows are the streams' own timings)"

iris: setup  # re-train the ready-to-run iris model that configs/iris.yaml serves (it is shipped already)
	$(BIN)/python scripts/train_iris.py configs/iris

# Tracing off vs on (added p50 and gateway CPU per request), interleaved rounds in one run; needs wrk.
TRACING_ARGS ?= --rounds 5 --duration 10
bench-tracing: setup
	$(BIN)/python benchmarks/tracing_overhead/run.py $(TRACING_ARGS)

clean:
	rm -rf $(VENV) .llmserve .mypy_cache .ruff_cache .pytest_cache

# The split topology's costs and gains (benchmarks/topology/run.py; results in benchmarks/results/topology_*.md).
bench-topology: setup
	$(BIN)/python benchmarks/topology/run.py hot-path --rounds 5 --duration 10
	$(BIN)/python benchmarks/topology/run.py workers --rounds 5 --duration 10
	$(BIN)/python benchmarks/topology/run.py controller-restart --rounds 5
	$(BIN)/python benchmarks/topology/run.py restart --rounds 5
