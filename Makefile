# The two commands: `make up` (set up, pull the embedded model, serve it) and `make test` (what CI runs).
VENV   ?= .venv
CONFIG ?= configs/quickstart.yaml
PORT   ?= 8080
BIN    := $(VENV)/bin

.PHONY: up test setup lint pull bench clean audit fuzz fuzz-api

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

# Known vulnerabilities in the installed environment (pip-audit; needs its vulnerability service, see README).
audit: setup
	$(BIN)/python scripts/audit.py

# Longer budgets than `make test` gives them: atheris, 10 minutes per target; schemathesis, 2000 examples per operation.
fuzz: setup
	LLMSERVE_FUZZ_SECONDS=600 $(BIN)/pytest tests/fuzz -q --timeout=0

fuzz-api: setup
	LLMSERVE_SCHEMATHESIS_EXAMPLES=2000 $(BIN)/pytest tests/integration/test_schemathesis.py -q --timeout=0

clean:
	rm -rf $(VENV) .llmserve .mypy_cache .ruff_cache .pytest_cache
