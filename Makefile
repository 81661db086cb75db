# The two commands: `make up` (set up, pull the embedded model, serve it) and `make test` (what CI runs).
VENV   ?= .venv
CONFIG ?= configs/quickstart.yaml
PORT   ?= 8080
BIN    := $(VENV)/bin

.PHONY: up test setup lint pull clean bench-deps bench-routing bench-peers bench-overhead bench-v2 bench-decision \
        bench-calibration bench-gpu readme-table

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

pull: setup
	$(BIN)/llmserve pull $(CONFIG)

clean:
	rm -rf $(VENV) .llmserve .mypy_cache .ruff_cache .pytest_cache

# Benchmarks: each target rewrites its result file(s) in benchmarks/results/ from HEAD, then the README's table.
# bench-routing and bench-calibration are deterministic (virtual time / recorded data) and need no quiet machine;
# the others time real processes: run them alone on the machine (they print the load average they saw).
BENCH := PYTHONPATH=$(CURDIR) PYTHONHASHSEED=0 nice -n 10 $(BIN)/python

bench-deps: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]'

bench-routing: bench-deps        ## routing_virtual.md/.json/*.png: the virtual-time sweep (~1 h on 2 cores)
	$(BENCH) -m benchmarks.routing.sweep --jobs 2
	$(MAKE) readme-table

bench-peers: bench-deps          ## routing_peers.md: vllm-router, sglang-router and our profiles over HTTP
	$(BENCH) -m benchmarks.routing.peers
	$(MAKE) readme-table

bench-overhead: bench-deps       ## gateway_overhead_head.md: CPU per request, 2k-token prompts, spaced streams
	$(BENCH) benchmarks/gateway_overhead/run.py
	$(MAKE) readme-table

bench-v2: bench-deps             ## v2_runtime_best.md: best-configured MLServer and KServe
	$(BENCH) benchmarks/v2_runtime/run.py
	$(MAKE) readme-table

bench-decision: bench-deps       ## routing_decision_cost_cold_warm.md
	$(BENCH) -m benchmarks.routing.decision_cost
	$(MAKE) readme-table

bench-calibration: setup         ## sim_calibration_holdout.md: the simulator's held-out error
	$(BENCH) -m benchmarks.sim_calibration.holdout
	$(MAKE) readme-table

bench-gpu:                       ## on a machine with an NVIDIA GPU: benchmarks/gpu/run.sh (see its header)
	benchmarks/gpu/run.sh

readme-table: setup              ## the README's benchmark table, regenerated from benchmarks/results
	PYTHONPATH=$(CURDIR) $(BIN)/python -m benchmarks.readme_table --write
