# The two commands: `make up` (set up, pull the embedded model, serve it) and `make test` (what CI runs).
VENV   ?= .venv
CONFIG ?= configs/quickstart.yaml
PORT   ?= 8080
BIN    := $(VENV)/bin

.PHONY: up test setup lint pull load iris clean bench-deps bench-routing bench-peers bench-overhead bench-v2 \
        bench-decision bench-calibration bench-gpu bench-topology bench-graph bench-tracing bench-transform-log readme-table \
        audit fuzz fuzz-api soak bench-exact-prefix

up: setup
	$(BIN)/llmserve pull $(CONFIG)
	$(BIN)/llmserve up -f $(CONFIG) --port $(PORT) --routing-profiles configs/routing

test: setup lint
	$(BIN)/llmserve pull configs/quickstart.yaml
	$(BIN)/pytest

setup: $(VENV)/.llmserve-installed

$(VENV)/.llmserve-installed: pyproject.toml scripts/setup.sh scripts/constraints.txt
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

# Known vulnerabilities in the installed environment (pip-audit; needs its vulnerability service, see README).
audit: setup
	$(BIN)/python scripts/audit.py

# Longer budgets than `make test` gives them: atheris, 10 minutes per target; schemathesis, 2000 examples per operation.
fuzz: setup
	LLMSERVE_FUZZ_SECONDS=600 $(BIN)/pytest tests/fuzz -q --timeout=0

fuzz-api: setup
	LLMSERVE_SCHEMATHESIS_EXAMPLES=2000 $(BIN)/pytest tests/integration/test_schemathesis.py -q --timeout=0

# Soak (run by hand, alone on the machine): 100 SSE streams for 10 minutes through llmserve up while simulated workers
# are killed and restarted; benchmarks/results/soak.md. SOAK_ARGS="--duration 60 --out ..." for a smoke run.
SOAK_ARGS ?= --duration 600 --streams 100
soak: setup
	$(BENCH) benchmarks/soak/run.py $(SOAK_ARGS)

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

bench-exact-prefix: bench-deps   ## routing_exact_prefix.md: exact engine prefix state (KV events' bound) vs learned
	$(BENCH) -m benchmarks.routing.exact_prefix --jobs 2

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

# The split topology's costs and gains (benchmarks/topology/run.py; results in benchmarks/results/topology_*.md).
bench-topology: bench-deps       ## topology_*.md: the split topology's costs and gains
	$(BENCH) benchmarks/topology/run.py hot-path --rounds 5 --duration 10
	$(BENCH) benchmarks/topology/run.py workers --rounds 5 --duration 10
	$(BENCH) benchmarks/topology/run.py controller-restart --rounds 5
	$(BENCH) benchmarks/topology/run.py restart --rounds 5
	$(MAKE) readme-table

# InferenceGraph overhead: a 3-step Sequence through the gateway vs the three calls made directly (and through the
# gateway one by one); results in benchmarks/results/graph_overhead.md. GRAPH_BENCH_ARGS=--smoke checks the harness.
GRAPH_BENCH_ARGS ?= --rounds 5 --requests 2000 --concurrency 1,8
bench-graph: bench-deps
	$(BENCH) benchmarks/graph_overhead/run.py $(GRAPH_BENCH_ARGS)
	$(MAKE) readme-table

# A no-op transformer's hop and payload logging (JSONL file, HTTP sink) vs neither, in one run; result in
# benchmarks/results/transform_log.md (benchmarks/transform_log/run.py).
bench-transform-log: setup       ## transform_log.md: added p50 and CPU per request of a transformer hop and of logging
	$(BENCH) benchmarks/transform_log/run.py --rounds 5 --requests 300
