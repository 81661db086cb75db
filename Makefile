# The two commands: `make up` (set up, pull the embedded model, serve it) and `make test` (what CI runs).
VENV   ?= .venv
CONFIG ?= configs/quickstart.yaml
PORT   ?= 8080
BIN    := $(VENV)/bin

.PHONY: up test setup lint pull iris bench clean

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

iris: setup  # re-train the ready-to-run iris model that configs/iris.yaml serves (it is shipped already)
	$(BIN)/python scripts/train_iris.py configs/iris

clean:
	rm -rf $(VENV) .llmserve .mypy_cache .ruff_cache .pytest_cache
